"""The shipped prior: real fine-tuning experience over the 40-task reference suite, which every install starts
with (protocol: docs/benchmark-protocol.md; design: ``design.json``; records: ``experiences.jsonl.gz``; the
meta-learner fitted on them: ``surrogate.safetensors``; its out-of-task prediction of each run, which the curve
forecaster reads: ``expected.json``).

It is read-only and kept apart from the user's own runs: :class:`PriorExperience` serves it with the same
read interface as :class:`~metapeft.experience.ExperienceStore`, and :func:`experiences` merges the two
unless the prior is switched off (``include_prior=False``, ``--no-prior`` or ``METAPEFT_PRIOR=0``).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._errors import StoreError
from ..experience import Experience, ExperienceStore, without_suspensions

HERE = Path(__file__).resolve().parent
DESIGN_PATH = HERE / "design.json"
EXPERIENCES_PATH = HERE / "experiences.jsonl.gz"
EXPECTED_PATH = HERE / "expected.json"
SOURCE = "prior"


class PriorExperience:
    """The packaged prior as a read-only experience storage."""

    def __init__(self, path: str | Path = EXPERIENCES_PATH):
        self.path = Path(path)

    def records(self) -> list[Experience]:
        return _load(str(self.path))

    def iter(self, *, status=None, method=None, task=None, source=None, limit=None) -> Iterator[Experience]:
        n = 0
        for r in self.records():
            if (
                (status and r.status != status)
                or (method and r.method != method)
                or (task and r.task_name != task)
                or (source and r.source != source)
            ):
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield r

    def query(self, **filters) -> list[Experience]:
        return list(self.iter(**filters))

    def count(self, **filters) -> int:
        return sum(1 for _ in self.iter(**{k if k != "task_name" else "task": v for k, v in filters.items()}))

    def add(self, *_args, **_kwargs):
        raise StoreError("the shipped prior is read-only; your runs go to your experience store")


def expected_accuracies() -> dict[str, float]:
    """The shipped surrogate's out-of-task prediction of each prior run's final accuracy, by record id (empty when
    the file is absent)."""
    return json.loads(EXPECTED_PATH.read_text()) if EXPECTED_PATH.exists() else {}


@functools.lru_cache(maxsize=2)
def _load(path: str) -> list[Experience]:
    p = Path(path)
    if not p.exists():
        return []
    with gzip.open(p, "rt", encoding="utf-8") as f:
        return [Experience.from_dict(json.loads(line)) for line in f if line.strip()]


def prior_enabled(include_prior: bool | None = None) -> bool:
    if include_prior is not None:
        return include_prior
    return os.environ.get("METAPEFT_PRIOR", "1").lower() not in ("0", "false", "no", "off")


def experiences(
    store: ExperienceStore | None = None, *, include_prior: bool | None = None, include_own: bool = True, **filters
) -> list[Experience]:
    """The prior (unless switched off) followed by the user's own runs, filtered alike; a prior run imported into
    one's own store (e.g. to resume the bench) counts once."""
    out = PriorExperience().query(**filters) if prior_enabled(include_prior) else []
    if include_own:
        out += (store or ExperienceStore()).query(**filters)
    return list({r.id: r for r in out}.values())


def write_prior(store: ExperienceStore, designs: str | Sequence[str], path: str | Path = EXPERIENCES_PATH) -> int:
    """Export the finished and failed runs of one or more bench designs as the packaged prior (``source="prior"``).
    The meta-learner shipped beside it is fitted on it by :func:`metapeft.meta.ship_prior`, which calls this.

    Args:
        store: The bench store holding the designs' runs (each tagged with its ``design`` and ``design_key``).
        designs: The design names whose runs make the prior.
        path: Where to write it (gzipped JSON lines, byte-identical for the same runs). Training times are written
            without the time a paused bench worker was stopped (:func:`~metapeft.experience.without_suspensions`).

    Returns:
        The runs written.
    """
    designs = {designs} if isinstance(designs, str) else set(designs)
    records = [r for r in store.iter() if r.tags.get("design") in designs and r.status in ("finished", "failed")]
    records.sort(key=lambda r: r.tags.get("design_key", r.id))
    lines = []
    for r in map(without_suspensions, records):  # training times without a paused worker's pauses
        r.source = SOURCE
        lines.append(json.dumps(r.as_dict(), default=str, separators=(",", ":")) + "\n")
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f,
    ):  # mtime=0: same runs, same bytes
        f.write("".join(lines).encode("utf-8"))
    _load.cache_clear()
    return len(records)
