"""The switching controller: follow the learning curve, switch when another method is expected to finish better.

At each learning-curve point up to ``latest`` of the budget, the controller forecasts the current method's accuracy
at the end of the budget (:class:`~metapeft.meta.CurveForecaster`, an interval from the experience's curves, which
also reads the meta-learner's expectation for the run's method and settings) and
asks the meta-learner what each other method is expected to reach if trained for the steps left, from scratch (a
switched run starts from what was learned, so this errs on the side of staying). With both read as normal, it
computes P(the other ends better) and switches to the likeliest when that is at least ``threshold``. The engine's
merge-and-continue keeps what was learned (``Switch`` in ``_callbacks``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .._config import DEFAULT_SWITCH_THRESHOLD
from ._callbacks import Switch, TrainerCallback, TrainerState


@dataclass
class SwitchPolicy:
    """When the controller switches."""

    threshold: float = field(
        default=DEFAULT_SWITCH_THRESHOLD,
        metadata={"help": "P(another method ends better) at or above which the run switches to it."},
    )
    latest: float = field(
        default=0.75, metadata={"help": "Last fraction of the budget at which a switch is considered."}
    )
    max_switches: int = field(default=1, metadata={"help": "Switches a run may make."})
    methods: list[str] | None = field(
        default=None, metadata={"help": "Methods it may switch to (default: every method the meta-learner knows)."}
    )
    cap_learning_rate: bool = field(
        default=True,
        metadata={
            "help": "Train the next method at no more than its default learning rate. The suggested rates suit a "
            "run from the pretrained encoder; after a merge they overwrite what the encoder knew (the forgetting "
            "benchmark in BENCHMARKS.md: linear-probe drops up to 7 points at 4-8x the default; at it, no more "
            "than static runs)."
        },
    )

    def __post_init__(self) -> None:
        from .._errors import OptionError

        if not 0.5 <= self.threshold < 1:
            raise OptionError("threshold", f"must be in [0.5, 1), got {self.threshold}")
        if not 0 < self.latest < 1:
            raise OptionError("latest", f"must be in (0, 1), got {self.latest}")
        if self.max_switches < 1:
            raise OptionError("max_switches", f"must be at least 1, got {self.max_switches}")


class SwitchController(TrainerCallback):
    """Switches the run's method on the forecast of its learning curve (module docstring). ``decisions`` lists what
    it weighed at each curve point: the forecast, the best alternative, P(better), and whether it switched."""

    def __init__(self, meta, profile: dict, forecaster, policy: SwitchPolicy | None = None):
        self.meta, self.profile, self.forecaster = meta, profile, forecaster
        self.policy = policy or SwitchPolicy()
        self.num_classes = int(profile.get("num_classes", 2))
        self.decisions: list[dict[str, Any]] = []

    def should_switch(self, state: TrainerState) -> Switch | None:
        from scipy.stats import norm

        from ..meta import Forecast

        if len(state.switches) >= self.policy.max_switches or state.step / state.max_steps > self.policy.latest:
            return None
        left = state.max_steps - state.step
        settings = {**state.hyperparameters, "max_steps": state.max_steps}
        expected = self.meta.expected_accuracy(self.profile, state.method, settings)
        forecast = self.forecaster.predict(state.method, self.num_classes, state.curve, state.max_steps, expected)
        names = [m for m in (self.policy.methods or self.meta.surrogate.encoder.methods) if m != state.method]
        best = None
        for r in self.meta.recommend(self.profile, methods=names, budget={"max_steps": left}):
            a = r.expected_performance["accuracy"]
            sd = Forecast(a["mean"], a["low"], a["high"], 0.9).sd  # the ranking's intervals are 90%
            p = float(norm.cdf((a["mean"] - forecast.mean) / math.hypot(sd, forecast.sd)))
            if best is None or p > best[0]:
                best = (p, r, a["mean"])
        decision = {
            "step": state.step,
            "method": state.method,
            "forecast": {
                "mean": round(forecast.mean, 4),
                "low": round(forecast.low, 4),
                "high": round(forecast.high, 4),
                "level": forecast.level,
            },
        }
        if best is None:
            self.decisions.append({**decision, "switched": False})
            return None
        p, r, expected = best
        decision.update(
            alternative=r.method,
            alternative_expected=round(expected, 4),
            p_better=round(p, 4),
            switched=p >= self.policy.threshold,
            suggested_learning_rate=r.hyperparameters.get("learning_rate"),
        )
        self.decisions.append(decision)
        if p < self.policy.threshold:
            return None
        hp = {k: v for k, v in r.hyperparameters.items() if k != "max_steps"}
        if self.policy.cap_learning_rate and "learning_rate" in hp:
            from ..methods import get_method

            hp["learning_rate"] = min(hp["learning_rate"], get_method(r.method).make_config({}).learning_rate)
        reason = (
            f"{state.method} forecast {forecast.mean:.3f} [{forecast.low:.3f}, {forecast.high:.3f}] at step "
            f"{state.max_steps}; {r.method} expected {expected:.3f} in the {left} steps left"
        )
        return Switch(r.method, hp, reason, round(p, 4))
