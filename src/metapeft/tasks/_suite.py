"""A suite: a manifest (JSON list of task entries, like ``shared/datasets/MANIFEST.json``) beside one folder per
task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .._errors import TaskError
from ._causal import CausalTask, load_causal_task
from ._data import DataSource, checkout
from ._loading import load_task
from ._task import Task


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    path: Path
    meta: dict
    source: DataSource | None = None  # the suite read at a DVC revision: where this task's folder is in it

    def load(self) -> Task | CausalTask:
        """The task; a causal-LM one (prompt/completion rows) when the entry's ``type`` is ``causal_lm``."""
        if self.meta.get("type") == "causal_lm":
            task = load_causal_task(self.path, name=self.name)
            task.domain = self.meta.get("domain")
            return task
        task = load_task(self.path, name=self.name, domain=self.meta.get("domain"))
        if self.source is not None:  # the checkout's md5, and the repository, path and revision it was read at
            rel = self.path.relative_to(self.source.local).as_posix()
            task.meta["data"]["dvc"] = {
                "repo": str(self.source.repo),
                "path": f"{self.source.path}/{rel}",
                "rev": self.source.rev,
            }
        return task


def load_suite(manifest: str | Path, data_rev: str | None = None) -> list[SuiteEntry]:
    """Entries of a suite; ``manifest`` is the JSON file or the folder holding ``MANIFEST.json``; ``data_rev`` reads
    the suite's folder as it was at that git revision of its DVC repository."""
    manifest = Path(manifest).expanduser()
    source = None
    if data_rev:
        folder, name = (
            (manifest.parent, manifest.name) if manifest.suffix.lower() == ".json" else (manifest, "MANIFEST.json")
        )
        source = checkout(folder, data_rev)
        manifest = source.local / name
    if manifest.is_dir():
        manifest = manifest / "MANIFEST.json"
    if not manifest.exists():
        raise TaskError(f"no suite manifest at {manifest} (expected a MANIFEST.json listing the tasks)")
    try:
        entries = json.loads(manifest.read_text())
    except json.JSONDecodeError as exc:
        raise TaskError(f"{manifest} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(entries, dict):
        entries = entries.get("tasks", [])
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry:
            raise TaskError(f"{manifest}: entry {i} has no 'name'")
        folder = manifest.parent / entry.get("path", entry["name"])
        if not folder.exists():
            raise TaskError(f"{manifest}: task {entry['name']!r} has no folder at {folder}")
        out.append(SuiteEntry(entry["name"], folder, entry, source))
    return out
