"""One fine-tuning run as the meta-learner sees it."""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Literal, get_args

import numpy as np

Status = Literal["running", "finished", "failed", "interrupted"]
STATUSES = get_args(Status)
# Longest text each column of the store takes (PostgreSQL refuses longer ones).
MAX_LENGTH = {
    "id": 32,
    "status": 16,
    "source": 64,
    "task_name": 256,
    "task_fingerprint": 64,
    "model": 256,
    "method": 64,
}
# Metrics that are not numbers: how peak memory was taken, what ``score`` is, and the packed per-example outcomes.
_TEXT_METRICS = ("memory_measure", "score_name")
_STRUCTURED_METRICS = {  # metrics that are not numbers: what each must be
    "outcomes": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of strings",
    ),  # per-example bits
    "switches": (
        lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        "a list of objects",
    ),  # a switching run's switches
    "forgetting": (lambda v: isinstance(v, dict), "an object"),  # a linear probe's figures (training.LinearProbe)
}


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Experience:
    """A run: on which task and model, which method and hyperparameters, and what it achieved.

    ``metrics`` holds the final numbers (accuracy, macro_f1, train_time_s, eval_time_s, peak_memory_mb — peak tensor
    memory — and train_memory_mb — its part above the loaded model —, trainable_params, total_params,
    adapter_size_bytes, steps, tokens_per_s, and for CPU runs cpu_share — the share of its cores the run got);
    ``curve`` the evaluations during training (step, fraction, train_loss, accuracy, macro_f1, train_time_s).
    ``source`` says where the record came from: ``metapeft`` for our own runs, ``hf-peft-method-comparison`` for
    imported results, ….
    """

    task_name: str
    method: str
    model: str
    task_fingerprint: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    status: Status = "running"
    error: str | None = None
    source: str = "metapeft"
    seed: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        out["updated_at"] = self.updated_at.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experience:
        """The record ``as_dict`` wrote (unknown keys are ignored); ValueError for a mapping of the wrong shape."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {_kind(data)}")
        if missing := [k for k in ("task_name", "method", "model") if k not in data]:
            raise ValueError(f"missing {', '.join(missing)}")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        for key in ("created_at", "updated_at"):
            if isinstance(values.get(key), str):
                try:
                    values[key] = datetime.fromisoformat(values[key])
                except ValueError:
                    raise ValueError(f"{key}: expected an ISO date and time, got {values[key]!r:.60}") from None
        return cls(**values)

    def validate(self) -> Experience:
        """``self`` if every field has the type and range the store and the meta-learner expect, else ValueError
        naming the field (imported records are checked with it)."""

        def fail(name: str, expected: str, value: Any) -> None:
            shown = repr(value) if isinstance(value, (str, int, float)) else _kind(value)
            raise ValueError(f"{name}: expected {expected}, got {shown:.60}")

        for name, limit in MAX_LENGTH.items():
            value = getattr(self, name)
            if not isinstance(value, str) or (not value and name != "task_fingerprint") or len(value) > limit:
                kind = "a string" if name == "task_fingerprint" else "a non-empty string"
                fail(name, f"{kind} of at most {limit} characters", value)
        if self.status not in STATUSES:
            fail("status", f"one of {', '.join(STATUSES)}", self.status)
        for name in ("hyperparameters", "metrics", "profile", "environment", "tags"):
            if not isinstance(getattr(self, name), dict):
                fail(name, "an object", getattr(self, name))
        if not isinstance(self.curve, list):
            fail("curve", "a list", self.curve)
        for i, point in enumerate(self.curve):
            if not isinstance(point, dict):
                fail(f"curve[{i}]", "an object", point)
            for key, value in point.items():
                if not _number(value):
                    fail(f"curve[{i}].{key}", "a number", value)
        for key, value in self.metrics.items():
            if key in _STRUCTURED_METRICS:
                valid, expected = _STRUCTURED_METRICS[key]
                if not valid(value):
                    fail(f"metrics.{key}", expected, value)
            elif key in _TEXT_METRICS:
                if value is not None and not isinstance(value, str):
                    fail(f"metrics.{key}", "a string", value)
            elif not _number(value):
                fail(f"metrics.{key}", "a number", value)
        accuracy = self.metrics.get("accuracy")
        if accuracy is not None and not 0 <= accuracy <= 1:
            fail("metrics.accuracy", "a number from 0 to 1", accuracy)
        if self.error is not None and not isinstance(self.error, str):
            fail("error", "a string", self.error)
        seed = self.seed
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not -(2**31) <= seed < 2**31):
            fail("seed", "a 32-bit integer", seed)
        for name in ("created_at", "updated_at"):
            if not isinstance(getattr(self, name), datetime):
                fail(name, "an ISO date and time", getattr(self, name))
        return self


def _number(value: Any) -> bool:
    """A number (NaN and infinities included: a diverged loss is one) or None; not a boolean."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def pack_outcomes(correct: np.ndarray) -> str:
    """Per-example correctness as text: base64 of the bits (``numpy.packbits``), ~170 characters for 1,000
    examples. :func:`unpack_outcomes` reverses it."""
    return (
        base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii") + f":{len(correct)}"
    )


def unpack_outcomes(packed: str) -> np.ndarray:
    """The boolean array :func:`pack_outcomes` packed."""
    bits, n = packed.rsplit(":", 1)
    return np.unpackbits(np.frombuffer(base64.b64decode(bits), dtype=np.uint8))[: int(n)].astype(bool)


def paired_outcomes(records: list[Experience]) -> np.ndarray | None:
    """Runs × test rows: which rows each of ``records`` got right, for paired tests (McNemar, a paired bootstrap);
    None unless every run stored its outcomes on the same test rows."""
    stored = [r.metrics.get("outcomes") or {} for r in records]
    if not all(o.get("test") for o in stored) or len({o.get("test_rows") for o in stored}) != 1:
        return None
    correct = [unpack_outcomes(o["test"]) for o in stored]
    return np.stack(correct) if len({len(c) for c in correct}) == 1 else None


def measured_memory(metrics: dict) -> float | None:
    """Peak memory (MB) of a run that says how it was taken (``memory_measure``); None for earlier CPU runs, which
    recorded process RSS (~2.3 GB whatever the method) and cannot be compared with tensor memory."""
    return metrics.get("peak_memory_mb") if metrics.get("memory_measure") else None


CONTENDED_SHARE = 0.8  # of its CPU time a run must have got for its time to be the method's cost (StepClock)


def measured_time(record: Experience) -> float | None:
    """Training seconds of a run that had its cores to itself; None for one that did not: a CPU run whose threads got
    under :data:`CONTENDED_SHARE` of the CPU time they could use (``cpu_share``, recorded since the engine measured it)
    or one tagged ``timing: contended`` (earlier runs known to be so; ``benchmarks/ship_prior.py`` says which)."""
    share = record.metrics.get("cpu_share")
    if record.tags.get("timing") == "contended" or (share is not None and share < CONTENDED_SHARE):
        return None
    return record.metrics.get("train_time_s")


SUSPECT_SEGMENT = 3.0  # × the run's median time between curve points…
MIN_EXCESS_S = 60.0  # …and this many seconds over it: a pause, not the method's cost


def without_suspensions(record: Experience) -> Experience:
    """``record`` with the time it was suspended taken out of its training time, for runs recorded before the engine
    did so itself (:class:`~metapeft.training.StepClock`).

    A bench worker paused with SIGSTOP counted the pause as training: 29 of the 1,337 runs of the shipped prior (2.2%)
    have a stretch between curve points 3.6 to 118 times the run's median stretch (the rest of each run is steady),
    by 2.7 to 51 minutes. A stretch over :data:`SUSPECT_SEGMENT` times the median and :data:`MIN_EXCESS_S` seconds
    more is counted at the median; ``train_time_s``, ``tokens_per_s`` and the curve's times follow, and
    ``suspended_s`` says how much was taken out. A run without such a stretch (or without a curve of 4 points or
    more) is returned as it is.
    """
    curve = record.curve or []
    if record.metrics.get("suspended_s") is not None or len(curve) < 4:
        return record
    times = [0.0] + [float(p.get("train_time_s") or 0.0) for p in curve]
    stretches = np.diff(times)
    median = float(np.median(stretches))
    excess = np.where(
        (stretches > SUSPECT_SEGMENT * median) & (stretches - median > MIN_EXCESS_S), stretches - median, 0.0
    )
    if not excess.any():
        return record
    taken = np.cumsum(excess)
    metrics = dict(record.metrics)
    recorded = float(metrics.get("train_time_s") or times[-1])
    metrics["train_time_s"] = round(recorded - float(taken[-1]), 3)
    if metrics.get("tokens_per_s"):
        metrics["tokens_per_s"] = round(metrics["tokens_per_s"] * recorded / metrics["train_time_s"], 1)
    metrics["suspended_s"] = round(float(taken[-1]), 1)
    curve = [{**p, "train_time_s": round(float(p["train_time_s"]) - float(t), 3)} for p, t in zip(curve, taken)]
    return replace(record, metrics=metrics, curve=curve)
