"""A suite: a manifest (JSON list of task entries, like ``shared/datasets/MANIFEST.json``) beside one folder per task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .._errors import TaskError
from ._loading import load_task
from ._task import Task


@dataclass(frozen=True)
class SuiteEntry:
    name: str
    path: Path
    meta: dict

    def load(self) -> Task:
        return load_task(self.path, name=self.name, domain=self.meta.get("domain"))


def load_suite(manifest: str | Path) -> list[SuiteEntry]:
    """Entries of a suite; ``manifest`` is the JSON file or the folder holding ``MANIFEST.json``."""
    manifest = Path(manifest).expanduser()
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
        out.append(SuiteEntry(entry["name"], folder, entry))
    return out
