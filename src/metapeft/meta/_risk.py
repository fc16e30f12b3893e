"""Collapse risk: the probability that a method at a setting fails on a task, learned from the experience.

Most of what makes a choice bad is not the method's name but a setting that makes training collapse: of 527 runs at
random settings in the prior, 47 ended more than 20 points below the best run of their task instance, and the
method alone explains little of it (learning rates, scaled by their method's range, explain more). A run **failed**
when its accuracy is within 2 points of chance (the majority class's share) or more than 10 points below the best run
of its task instance. :class:`CollapseRisk` is a random forest over the task's profile features and the
configuration's encoding (the method and each setting scaled within its search range, as the surrogate sees them,
plus the step budget); its probabilities are checked on held-out tasks (``benchmarks/collapse_risk.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..experience import Experience, cell_key, usable
from ._features import ConfigEncoder, budgeted, effective_max_length, profile_vector, steps_of

CHANCE_MARGIN = 0.02  # within this of the majority class's share: no better than chance
REGRET_LIMIT = 10.0  # points below the best run of the task instance


def chance_accuracy(profile: dict) -> float:
    """The accuracy of always answering the majority class (1 / classes where the profile lacks the share)."""
    return float(profile.get("majority_accuracy") or 1.0 / max(2, int(profile.get("num_classes") or 2)))


def failures(records: list[Experience]) -> np.ndarray:
    """Whether each run failed (module docstring), against the other runs of its task instance in ``records``."""
    best: dict[str, float] = defaultdict(float)
    for r in records:
        best[cell_key(r)] = max(best[cell_key(r)], float(r.metrics["accuracy"]))
    out = []
    for r in records:
        accuracy = float(r.metrics["accuracy"])
        out.append(
            accuracy <= chance_accuracy(r.profile) + CHANCE_MARGIN
            or 100 * (best[cell_key(r)] - accuracy) > REGRET_LIMIT
        )
    return np.asarray(out, bool)


class CollapseRisk:
    """P(failure) of (task profile, method, settings), fitted on the experience's runs.

    The fitted forest is kept as arrays (``state`` / ``from_state``): the surrogate saves them beside its networks
    in safetensors, so a fresh process answers without refitting (1.5 s) and without unpickling anything.

    >>> risk = CollapseRisk().fit(records)                                       # doctest: +SKIP
    >>> risk.predict(profile, [("lora", {"learning_rate": 8e-3, "max_steps": 80})])   # doctest: +SKIP
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.encoder = ConfigEncoder()
        self.base_rate: float | None = None
        # the forest's trees, their nodes concatenated: children (-1 at a leaf), split feature and threshold, and
        # the share of failed runs at the node; ``roots`` indexes each tree's first node
        self.nodes: dict[str, np.ndarray] | None = None

    def _features(self, profile: dict, method: str, hyperparameters: dict[str, Any], steps: float) -> np.ndarray:
        config = self.encoder.encode(method, hyperparameters, effective_max_length(hyperparameters, profile))
        return np.concatenate([profile_vector(profile), config, [math.log2(max(1.0, steps))]]).astype(np.float32)

    def fit(self, records: list[Experience]) -> CollapseRisk:
        """Learn from the usable runs of ``records``; returns ``self``."""
        from sklearn.ensemble import RandomForestClassifier

        records = [r for r in records if usable(r)]
        if not records:
            raise ValueError("collapse risk needs finished runs to learn from")
        y = failures(records)
        self.base_rate = float(y.mean())
        self.nodes = None
        if y.all() or not y.any():  # one class: the base rate is all there is to say
            return self
        x = np.stack(
            [
                self._features(r.profile, r.method, r.hyperparameters, steps_of(r.hyperparameters, r.metrics))
                for r in records
            ]
        )
        # a forest separated held-out tasks' failures at least as well as the others tried (AUC 0.72 over random task
        # splits; gradient boosting and logistic regression no better: benchmarks/collapse_risk.py, BENCHMARKS.md)
        forest = RandomForestClassifier(
            150, min_samples_leaf=5, max_features=0.3, random_state=self.seed, n_jobs=1
        ).fit(x, y)
        failed = list(forest.classes_).index(True)
        parts, offset = defaultdict(list), 0
        for tree in forest.estimators_:
            t = tree.tree_
            value = t.value[:, 0, :]
            parts["roots"].append([offset])
            parts["left"].append(np.where(t.children_left >= 0, t.children_left + offset, -1))
            parts["right"].append(np.where(t.children_right >= 0, t.children_right + offset, -1))
            parts["feature"].append(np.maximum(t.feature, 0))  # a leaf's (-2) is never read
            parts["threshold"].append(t.threshold)
            parts["fail"].append(value[:, failed] / value.sum(1))
            offset += t.node_count
        self.nodes = {k: np.concatenate(v) for k, v in parts.items()}
        for k in ("roots", "left", "right", "feature"):
            self.nodes[k] = self.nodes[k].astype(np.int32)
        return self

    def predict(self, profile: dict, configs: list[tuple[str, dict[str, Any]]]) -> np.ndarray:
        """P(failure) of each (method, hyperparameters) on the task ``profile`` (a missing setting is its default;
        ``max_steps`` the budget, default :func:`~metapeft.methods.default_steps` of the task's size)."""
        if self.base_rate is None:
            raise RuntimeError("fit the collapse-risk model first")
        if self.nodes is None:
            return np.full(len(configs), self.base_rate)
        configs = [(m, budgeted(hp, profile)) for m, hp in configs]
        x = np.stack([self._features(profile, m, hp, float(hp["max_steps"])) for m, hp in configs])
        # every (tree, row) pair walks down its tree at once, a level per step, those at a leaf dropping out: the
        # forest's mean of its leaves' failure shares, as scikit-learn's predict_proba computes it (a float32 input
        # against float64 thresholds)
        n = self.nodes
        node = np.repeat(n["roots"], len(x))  # tree-major: pair k is tree k // len(x), row k % len(x)
        row = np.tile(np.arange(len(x)), len(n["roots"]))
        walking = np.arange(len(node))
        while walking.size:
            at = node[walking]
            left = n["left"][at]
            inner = left >= 0
            walking, at, left = walking[inner], at[inner], left[inner]
            go_left = x[row[walking], n["feature"][at]] <= n["threshold"][at]
            node[walking] = np.where(go_left, left, n["right"][at])
        return n["fail"][node].reshape(len(n["roots"]), len(x)).mean(0)

    def state(self) -> dict[str, np.ndarray]:
        """The fitted model as arrays (safetensors-ready)."""
        if self.base_rate is None:
            raise RuntimeError("fit the collapse-risk model first")
        return {"base_rate": np.array([self.base_rate]), "seed": np.array([self.seed]), **(self.nodes or {})}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray]) -> CollapseRisk:
        """The model ``state`` saved."""
        self = cls(int(arrays["seed"][0]))
        self.base_rate = float(arrays["base_rate"][0])
        if "roots" in arrays:
            self.nodes = {k: np.asarray(arrays[k]) for k in ("roots", "left", "right", "feature", "threshold", "fail")}
        return self
