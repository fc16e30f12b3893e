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
from ._features import ConfigEncoder, effective_max_length, profile_vector, steps_of

CHANCE_MARGIN = 0.02  # within this of the majority class's share: no better than chance
REGRET_LIMIT = 10.0  # points below the best run of the task instance


def failures(records: list[Experience]) -> np.ndarray:
    """Whether each run failed (module docstring), against the other runs of its task instance in ``records``."""
    best: dict[str, float] = defaultdict(float)
    for r in records:
        best[cell_key(r)] = max(best[cell_key(r)], float(r.metrics["accuracy"]))
    out = []
    for r in records:
        accuracy = float(r.metrics["accuracy"])
        chance = float(r.profile.get("majority_accuracy") or 1.0 / max(2, int(r.profile.get("num_classes") or 2)))
        out.append(accuracy <= chance + CHANCE_MARGIN or 100 * (best[cell_key(r)] - accuracy) > REGRET_LIMIT)
    return np.asarray(out, bool)


class CollapseRisk:
    """P(failure) of (task profile, method, settings), fitted on the experience's runs.

    >>> risk = CollapseRisk().fit(records)                                       # doctest: +SKIP
    >>> risk.predict(profile, [("lora", {"learning_rate": 8e-3, "max_steps": 80})])   # doctest: +SKIP
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.encoder = ConfigEncoder()
        self.model = None
        self.base_rate = None

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
        if y.all() or not y.any():  # one class: the base rate is all there is to say
            self.model = None
            return self
        x = np.stack(
            [
                self._features(r.profile, r.method, r.hyperparameters, steps_of(r.hyperparameters, r.metrics))
                for r in records
            ]
        )
        # a forest separated held-out tasks' failures at least as well as the others tried (AUC 0.72 over random task
        # splits; gradient boosting and logistic regression no better: benchmarks/collapse_risk.py, BENCHMARKS.md)
        self.model = RandomForestClassifier(
            150, min_samples_leaf=5, max_features=0.3, random_state=self.seed, n_jobs=1
        ).fit(x, y)
        return self

    def predict(self, profile: dict, configs: list[tuple[str, dict[str, Any]]]) -> np.ndarray:
        """P(failure) of each (method, hyperparameters) on the task ``profile`` (a missing setting is its default;
        ``max_steps`` the budget, default the method's)."""
        if self.base_rate is None:
            raise RuntimeError("fit the collapse-risk model first")
        if self.model is None:
            return np.full(len(configs), self.base_rate)
        from ..methods import get_method

        x = np.ascontiguousarray(
            np.stack(
                [
                    self._features(profile, m, hp, float(hp.get("max_steps") or get_method(m).defaults().max_steps))
                    for m, hp in configs
                ]
            )
        )
        # the forest's mean of its trees' leaf class fractions, as predict_proba computes it: predict_proba sends every
        # tree through joblib and input checks (18 ms for a ranking's 10 rows, on recommend's path), this takes 2 ms
        failed = list(self.model.classes_).index(True)
        total = np.zeros(len(x))
        for tree in self.model.estimators_:
            leaves = tree.tree_.predict(x).reshape(len(x), -1)
            total += leaves[:, failed] / leaves.sum(1)
        return total / len(self.model.estimators_)
