"""The in-memory task: labelled texts (optionally text pairs) with a train and a held-out split."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    texts: list[str]
    labels: list[int]
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices) -> Split:
        idx = [int(i) for i in indices]
        return Split(
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            pairs=[self.pairs[i] for i in idx] if self.pairs is not None else None,
        )


@dataclass
class Task:
    """A text-classification task. ``labels`` in each split index into ``label_names``."""

    name: str
    label_names: list[str]
    train: Split
    test: Split
    source: str = ""
    test_source: str = "file"  # "file" when the held-out split came with the data, "split" when we made it
    domain: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return self.train.pairs is not None

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash: the same data gives the same fingerprint wherever it was loaded from (computed once:
        treat a task's data as read-only after first use)."""
        digest = hashlib.sha256(json.dumps(self.label_names).encode())
        for split in (self.train, self.test):
            pairs = split.pairs or [None] * len(split)
            for text, pair, label in zip(split.texts, pairs, split.labels):
                digest.update(json.dumps([text, pair, label]).encode())
            digest.update(b"|")
        return digest.hexdigest()[:16]

    def subsample(self, n_train: int, seed: int = 0) -> Task:
        """A copy whose train split holds ``n_train`` examples, drawn stratified by label (test unchanged)."""
        if n_train >= len(self.train):
            return self
        idx = stratified_indices(self.train.labels, n_train, seed)
        return Task(
            name=f"{self.name}@{n_train}",
            label_names=self.label_names,
            train=self.train.select(idx),
            test=self.test,
            source=self.source,
            test_source=self.test_source,
            domain=self.domain,
            meta={**self.meta, "parent": self.name, "n_train": n_train, "subsample_seed": seed},
        )


def stratified_indices(labels: list[int], n: int, seed: int, leave: int = 0) -> np.ndarray:
    """Indices of a seeded sample of ``n`` rows whose class proportions follow ``labels``.

    Every class present keeps at least one row while ``n`` allows it (scikit-learn's stratified splitter
    refuses classes with a single member, which real long-tailed tasks such as clinc150 subsets have).
    ``leave`` rows of every class stay out of the sample (a held-out split must not take a class's last
    training example).
    """
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels_arr, return_counts=True)
    available = np.maximum(counts - leave, 0)
    n = min(n, int(available.sum()))
    quota = np.minimum(np.floor(counts / counts.sum() * n).astype(int), available)
    quota = np.minimum(np.maximum(quota, 1), available) if n >= len(classes) else quota
    # Hand out what rounding left over (or take back any excess), largest remainders first.
    order = np.argsort(-(counts / counts.sum() * n - quota))
    i = 0
    while quota.sum() != n:
        c = order[i % len(order)]
        if quota.sum() < n and quota[c] < available[c]:
            quota[c] += 1
        elif quota.sum() > n and quota[c] > 1:
            quota[c] -= 1
        i += 1
    chosen = [rng.choice(np.flatnonzero(labels_arr == c), size=q, replace=False) for c, q in zip(classes, quota)]
    out = np.concatenate(chosen)
    rng.shuffle(out)
    return out
