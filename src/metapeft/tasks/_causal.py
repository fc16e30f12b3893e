"""Causal-LM tasks: a prompt and the completion a model should write after it.

Rows are JSON objects with ``prompt`` and ``completion`` (or only ``text``: a plain continuation task whose whole
text is the completion of an empty prompt). A file, or a folder with ``train.jsonl`` and ``test.jsonl``, is read
as ``load_task`` reads classification data; without a held-out file, a seeded 10% is held out. Completions that
are a small closed set are taken as label words. A classification task becomes one by verbalising its labels
(:func:`verbalise`): the prompt holds the text, the completion is the label's name, so a causal LM can take the
classification suite and its exact match is the accuracy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import TaskError
from ._loading import _read_jsonl
from ._task import Task

VERBALISE_TEMPLATE = "{text}\nLabel:"


@dataclass
class CausalTask:
    """A causal-LM task: (prompt, completion) pairs; ``labels`` lists the label words of a verbalised
    classification task (None for free text)."""

    name: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    labels: list[str] | None = None
    meta: dict = field(default_factory=dict)
    domain: str | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash of the rows (as :attr:`Task.fingerprint`; it also tells a causal task from a
        classification task on the same texts)."""
        digest = hashlib.sha256(b"causal_lm|" + json.dumps(self.labels).encode())
        for split in (self.train, self.test):
            for row in split:
                digest.update(json.dumps(row).encode())
            digest.update(b"|")
        return digest.hexdigest()[:16]

    def subsample(self, n_train: int, seed: int = 0) -> CausalTask:
        """A copy whose train split holds ``n_train`` rows drawn at random (test unchanged)."""
        if n_train >= len(self.train):
            return self
        rows = random.Random(seed).sample(self.train, n_train)
        return CausalTask(
            f"{self.name}@{n_train}", rows, self.test, self.labels, {**self.meta, "n_train": n_train}, self.domain
        )


def _rows(path: Path) -> list[tuple[str, str]]:
    out = []
    for row in _read_jsonl(path):  # the classification reader's: one-line errors naming the line, BOM, strict UTF-8
        if isinstance(row.get("completion"), str) and isinstance(row.get("prompt", ""), str):
            out.append((row.get("prompt", ""), row["completion"]))
        elif isinstance(row.get("text"), str):
            out.append(("", row["text"]))
        else:
            raise TaskError(
                f"{path} line {row.get('__line__', '?')}: a causal-LM row needs 'prompt' and 'completion' "
                "strings, or 'text'"
            )
    if not out:
        raise TaskError(f"{path}: no rows")
    return out


def load_causal_task(
    path: str | Path, *, name: str | None = None, test_fraction: float = 0.1, seed: int = 0
) -> CausalTask:
    """A causal-LM task from a JSONL file or a folder with ``train.jsonl`` (and ``test.jsonl``).

    Raises:
        TaskError: The path does not exist, or a row is neither prompt/completion nor text (naming the line).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        train_file, test_file = path / "train.jsonl", path / "test.jsonl"
        if not train_file.is_file():
            raise TaskError(f"{path}: no train.jsonl (a causal-LM task folder holds train.jsonl and test.jsonl)")
        train, test = _rows(train_file), (_rows(test_file) if test_file.is_file() else None)
    elif path.is_file():
        train, test = _rows(path), None
    else:
        raise TaskError(f"no such file or directory: {path} (give a JSONL file of prompt/completion or text rows)")
    if test is None:
        if len(train) < 10:
            raise TaskError(
                f"{path}: {len(train)} rows are too few to hold out a test split; give at least 10, or a test.jsonl"
            )
        rows = train[:]
        random.Random(seed).shuffle(rows)
        cut = max(1, round(len(rows) * test_fraction))
        train, test = rows[cut:], rows[:cut]
    return CausalTask(
        name or (path.stem if path.is_file() else path.name),
        train,
        test,
        _label_words(train, test),
        {"source": str(path)},
    )


def _label_words(train: list[tuple[str, str]], test: list[tuple[str, str]]) -> list[str] | None:
    """The completions as label words when they are a small closed set (at most 50, none new in the test split, each
    seen 5 times on average): classification as generation, profiled as such. None for free text."""
    words = sorted({c for _, c in train})
    if len(words) <= 50 and len(train) >= 5 * len(words) and {c for _, c in test} <= set(words):
        return words
    return None


def verbalise(task: Task, template: str = VERBALISE_TEMPLATE) -> CausalTask:
    """``task`` as generation: the prompt is ``template`` filled with the text (and its pair, after a newline), the
    completion ``" " + label name``."""

    def rows(split) -> list[tuple[str, str]]:
        pairs = split.pairs or [None] * len(split)
        return [
            (template.format(text=t if p is None else f"{t}\n{p}"), " " + task.label_names[y])
            for t, p, y in zip(split.texts, pairs, split.labels)
        ]

    return CausalTask(
        f"{task.name}-verbalised",
        rows(task.train),
        rows(task.test),
        [" " + n for n in task.label_names],
        {"verbalised": task.name, **({"data": task.meta["data"]} if "data" in task.meta else {})},
        task.domain,
    )
