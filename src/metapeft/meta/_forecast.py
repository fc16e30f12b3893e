"""Learning-curve forecasting: a run's accuracy at the end of its budget, from the part of its curve seen so far.

Fitted on the experience's curves: every curve point before the last is one example (what was seen up to it →
the final accuracy). The point forecast is the last accuracy plus the gain a gradient-boosted regression expects
from the run's last two accuracies, its fraction of the budget, the budget, the task's chance level and the method;
the interval is split-conformal: the quantiles of the out-of-fold residuals (folds by task, so that an interval is
what a new task gets), per stretch of the budget (a forecast at a quarter of the budget is wider than one at three
quarters).

The switching controller (:class:`~metapeft.training.SwitchController`) weighs it against the surrogate's
prediction for the methods it could switch to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..experience import Experience, task_group, usable
from ..methods import list_methods

STRETCHES = (0.3, 0.6, 1.0)  # a forecast's interval is calibrated on the points up to these fractions of the budget


@dataclass
class Forecast:
    """Expected accuracy at the end of the budget and its central ``level`` interval."""

    mean: float
    low: float
    high: float
    level: float

    @property
    def sd(self) -> float:
        """The interval read as a normal one's spread."""
        from scipy.stats import norm

        return max(1e-4, (self.high - self.low) / (2 * norm.ppf(0.5 + self.level / 2)))


def curve_rows(record: Experience) -> list[tuple[list[dict], float]]:
    """(the curve up to a point, the final accuracy) for every point of ``record``'s curve before its last."""
    curve = [p for p in record.curve or [] if p.get("accuracy") is not None and p.get("step")]
    final = record.metrics.get("accuracy")
    if len(curve) < 2 or final is None:
        return []
    return [(curve[: i + 1], float(final)) for i in range(len(curve) - 1)]


class CurveForecaster:
    """Forecasts a run's final accuracy from its partial learning curve (module docstring).

    >>> forecaster = CurveForecaster().fit(records)                                        # doctest: +SKIP
    >>> forecaster.predict("lora", 2, [{"step": 20, "accuracy": 0.71}], total_steps=80)    # doctest: +SKIP
    """

    def __init__(self, level: float = 0.8, folds: int = 5, seed: int = 0):
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        self.level, self.folds, self.seed = level, folds, seed
        self.methods = [m.name for m in list_methods()]
        self.reads_expected = False  # fitted with the surrogate's predictions: ``expected`` is an input

    def features(
        self, method: str, num_classes: int, curve: list[dict], total_steps: int, expected: float | None = None
    ) -> list[float]:
        last = curve[-1]
        before = curve[-2]["accuracy"] if len(curve) > 1 else last["accuracy"]
        chance = 1.0 / max(2, num_classes)
        fraction = last["step"] / total_steps
        return [
            last["accuracy"],
            last["accuracy"] - before,
            fraction,
            math.log(total_steps),
            chance,
            last["accuracy"] - chance,
            *([math.nan if expected is None else expected - last["accuracy"]] if self.reads_expected else []),
            *(float(method == m) for m in self.methods),
        ]

    def _rows(
        self, records: list[Experience], expected: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        x, y, fractions, groups = [], [], [], []
        for r in records:
            if not usable(r):
                continue
            total = int(r.metrics.get("steps") or r.hyperparameters.get("max_steps") or 0)
            for seen, final in curve_rows(r):
                if total and seen[-1]["step"] < total:
                    num_classes = int((r.profile or {}).get("num_classes", 2))
                    x.append(self.features(r.method, num_classes, seen, total, expected.get(r.id)))
                    y.append(final - seen[-1]["accuracy"])  # the gain still to come
                    fractions.append(seen[-1]["step"] / total)
                    groups.append(task_group(r))
        return np.asarray(x, float), np.asarray(y, float), np.asarray(fractions, float), groups

    def _model(self):
        from sklearn.ensemble import HistGradientBoostingRegressor

        # shallow and strongly regularised: on the prior's curves (5 folds by task) deeper trees forecast worse than
        # the last point itself at three quarters of the budget
        return HistGradientBoostingRegressor(
            max_iter=60,
            learning_rate=0.05,
            max_depth=3,
            min_samples_leaf=80,
            l2_regularization=1.0,
            random_state=self.seed,
        )

    def fit(self, records: list[Experience], expected: dict[str, float] | None = None) -> CurveForecaster:
        """Fit on the curves of ``records`` (finished runs with at least two curve points).

        Args:
            records: The experience.
            expected: The surrogate's out-of-task prediction of each run's final accuracy, by record id (runs
                without one are fitted without it).

        Returns:
            The fitted forecaster.
        """
        from sklearn.model_selection import GroupKFold

        self.reads_expected = bool(expected)  # a column of missing values only is one the trees cannot bin
        x, y, fractions, groups = self._rows(records, expected or {})  # y: the gain from each point to the end
        if len(y) < 50 or len(set(groups)) < self.folds:
            raise ValueError(
                f"a curve forecaster needs curves of at least {self.folds} tasks and 50 points; the "
                f"experience has {len(set(groups))} tasks, {len(y)} points"
            )
        residuals = np.empty(len(y))
        for train, held in GroupKFold(self.folds).split(x, y, groups):
            residuals[held] = y[held] - self._model().fit(x[train], y[train]).predict(x[held])
        tail = (1 - self.level) / 2
        self.bounds = []
        for upper in STRETCHES:  # each stretch's residual quantiles (a stretch with few points borrows from all)
            lower = max([0.0, *[s for s in STRETCHES if s < upper]])
            inside = residuals[(fractions > lower) & (fractions <= upper)]
            inside = inside if len(inside) >= 30 else residuals
            self.bounds.append((upper, float(np.quantile(inside, tail)), float(np.quantile(inside, 1 - tail))))
        self.model = self._model().fit(x, y)
        self.points_ = len(y)
        return self

    def predict(
        self, method: str, num_classes: int, curve: list[dict], total_steps: int, expected: float | None = None
    ) -> Forecast:
        """The final accuracy of a run of ``method`` on a task of ``num_classes`` labels, ``total_steps`` long, whose
        curve so far is ``curve`` (points with ``step`` and ``accuracy``); ``expected`` is the surrogate's
        prediction for the run, if there is one."""
        if not curve:
            raise ValueError("a forecast needs at least one curve point")
        row = self.features(method, num_classes, curve, total_steps, expected)
        mean = curve[-1]["accuracy"] + float(self.model.predict(np.asarray([row]))[0])
        fraction = curve[-1]["step"] / total_steps
        _, low, high = next(b for b in self.bounds if fraction <= b[0] or b is self.bounds[-1])
        return Forecast(
            float(np.clip(mean, 0, 1)), float(np.clip(mean + low, 0, 1)), float(np.clip(mean + high, 0, 1)), self.level
        )
