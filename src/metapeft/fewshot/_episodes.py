"""Episodes: N-way K-shot draws from a task, the unit of meta-training.

An episode takes ``classes`` labels of a task and, for each, ``shots`` support and ``query`` query examples from
its training split — never the same example in both — and numbers the chosen labels 0..N-1 in a random order, so
that what is meta-learned cannot hang on a task's label ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._errors import MetapeftError
from ..tasks import Split, Task


@dataclass(frozen=True)
class TaskConfig:
    """One task of the meta-training distribution and how its episodes are drawn.

    Args:
        task: Name of a suite task.
        classes: Labels per episode (N-way); fewer when the task has fewer with enough examples.
        shots: Support examples per label (K).
        query: Query examples per label.
    """

    task: str
    classes: int = 5
    shots: int = 8
    query: int = 8

    def __post_init__(self) -> None:
        for name in ("classes", "shots", "query"):
            if getattr(self, name) < 1:
                raise MetapeftError(f"task config {self.task!r}: {name} must be at least 1, got {getattr(self, name)}")
        if self.classes < 2:
            raise MetapeftError(f"task config {self.task!r}: an episode needs at least 2 classes, got {self.classes}")


@dataclass
class Episode:
    """A support set and a query set of one task, labels renumbered 0..N-1 (``classes`` maps them back)."""

    task: str
    support: Split
    query: Split
    classes: list[int]


def sample_episode(task: Task, config: TaskConfig, rng: np.random.Generator) -> Episode:
    """An N-way K-shot episode of ``task`` drawn with ``rng`` (see the module docstring)."""
    labels = np.asarray(task.train.labels)
    need = config.shots + config.query
    eligible = [c for c in np.unique(labels) if (labels == c).sum() >= need]
    if len(eligible) < 2:
        raise MetapeftError(
            f"task {task.name}: fewer than 2 labels have {need} training examples ({config.shots} shots + "
            f"{config.query} query); lower shots or query"
        )
    chosen = rng.choice(eligible, size=min(config.classes, len(eligible)), replace=False)
    support, query, support_y, query_y = [], [], [], []
    for new, c in enumerate(chosen):
        rows = rng.permutation(np.flatnonzero(labels == c))[:need]
        support += rows[: config.shots].tolist()
        query += rows[config.shots :].tolist()
        support_y += [new] * config.shots
        query_y += [new] * config.query
    return Episode(
        task.name,
        _relabel(task.train.select(support), support_y),
        _relabel(task.train.select(query), query_y),
        [int(c) for c in chosen],
    )


def few_shot_split(task: Task, shots: int, seed: int) -> tuple[Split, list[str]]:
    """``shots`` training examples per label of ``task`` (seeded); a label with fewer gives what it has. Returns the
    split and a note per label that fell short."""
    labels = np.asarray(task.train.labels)
    rng = np.random.default_rng(seed)
    rows, short = [], []
    for c in range(task.num_labels):
        own = np.flatnonzero(labels == c)
        if len(own) == 0:
            raise MetapeftError(
                f"{task.name}: label {task.label_names[c]!r} has no training example; add some or drop the label"
            )
        if len(own) < shots:
            short.append(
                f"label {task.label_names[c]!r} has {len(own)} training examples, fewer than --shots {shots}: "
                "all of them are used"
            )
        rows += rng.permutation(own)[:shots].tolist()
    return task.train.select(sorted(rows)), short


def _relabel(split: Split, labels: list[int]) -> Split:
    return Split(split.texts, labels, split.pairs)
