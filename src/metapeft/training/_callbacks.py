"""The training loop's seam: callbacks that watch a run and may stop it or switch its method.

A callback is a :class:`TrainerCallback` subclass overriding any of its hooks. The engine calls them in list order,
in this lifecycle:

1. ``on_train_begin(state)`` once, after the model and optimiser are built;
2. per step: ``on_optimizer_step(state)`` after ``optimizer.step()`` while gradients and optimiser state exist
   (memory counting); ``should_stop(state)``, where the first :class:`Stop` ends the run after this step;
   ``on_evaluate(state)`` after each learning-curve point; then, when the run goes on, ``should_switch(state)``,
   where the first :class:`Switch` continues the run with another method (the engine merges the current adapter
   into the weights, keeps the head and its optimiser state, starts the new method's parameters on a fresh
   optimiser with a short warm-up, and calls ``on_switch(state)``
   with ``state.switches[-1]`` describing it); ``on_step_end(state)`` last;
3. ``on_train_end(state)`` once, also when a callback stopped the run.

The progress bar (:class:`Progress`), the wall-clock budget (:class:`TimeBudget`) and a pruner reading the learning
curve (:class:`StopWhen`) are callbacks; so is the peak-memory count the engine always adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainerState:
    """What a callback sees: the step just taken (1-based) of ``max_steps``, its loss, seconds of training so far
    (evaluation excluded), the learning curve so far, the model and optimiser (to read, not to replace), the method
    being trained and its settings (after a switch: the next method's, ``max_steps`` the steps it was given), and
    the switches made so far."""

    max_steps: int
    step: int = 0
    loss: float | None = None
    train_time_s: float = 0.0
    curve: list[dict] = field(default_factory=list)
    model: Any = None
    optimizer: Any = None
    method: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    switches: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stop:
    """A callback's request to end the run after this step. ``final``: the model at this step is the run's result
    (evaluated on the final sample, like a finished run: a time budget); otherwise the run was judged, not
    finished (a pruner), and is evaluated on the curve's sample."""

    reason: str
    final: bool = False


@dataclass
class Switch:
    """A callback's request, after a learning-curve point, to train the rest of the run with ``method`` (its
    defaults overridden by ``hyperparameters``; ``max_steps`` is set to the steps left). ``reason`` and
    ``p_better`` (the controller's probability that the switch ends better) are recorded with the switch."""

    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    p_better: float | None = None


class TrainerCallback:
    """Base class: every hook does nothing; override the ones you need (lifecycle in the module docstring)."""

    def on_train_begin(self, state: TrainerState) -> None:
        pass

    def on_optimizer_step(self, state: TrainerState) -> None:
        pass

    def should_stop(self, state: TrainerState) -> Stop | None:
        return None

    def on_evaluate(self, state: TrainerState) -> None:
        pass

    def should_switch(self, state: TrainerState) -> Switch | None:
        return None

    def on_switch(self, state: TrainerState) -> None:
        pass

    def on_step_end(self, state: TrainerState) -> None:
        pass

    def on_train_end(self, state: TrainerState) -> None:
        pass


class Progress(TrainerCallback):
    """Calls ``fn(step, max_steps, numbers)`` after every step; ``numbers`` holds the loss and, once measured, the
    latest curve accuracy (a progress bar)."""

    def __init__(self, fn: Callable[[int, int, dict], None]):
        self.fn = fn

    def on_step_end(self, state: TrainerState) -> None:
        self.fn(
            state.step,
            state.max_steps,
            {"loss": state.loss, **({"accuracy": state.curve[-1]["accuracy"]} if state.curve else {})},
        )


class TimeBudget(TrainerCallback):
    """Stops the run once ``seconds`` of training have passed; the model reached is the run's result."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def should_stop(self, state: TrainerState) -> Stop | None:
        return Stop("time_budget", final=True) if state.train_time_s >= self.seconds else None


class StopWhen(TrainerCallback):
    """Asks ``fn(step, curve)`` after every step but the last; True stops the run as judged, not finished (an
    Optuna pruner reading the learning curve)."""

    def __init__(self, fn: Callable[[int, list[dict]], bool], reason: str = "should_stop"):
        self.fn, self.reason = fn, reason

    def should_stop(self, state: TrainerState) -> Stop | None:
        return Stop(self.reason) if state.step < state.max_steps and self.fn(state.step, state.curve) else None


class SwitchAt(TrainerCallback):
    """Switches to ``method`` at the first learning-curve point at or after ``step`` (a fixed schedule: tests, and
    baselines such as training one method for part of the budget and another for the rest)."""

    def __init__(
        self, step: int, method: str, hyperparameters: dict[str, Any] | None = None, reason: str = "scheduled"
    ):
        self.step, self.method, self.hyperparameters, self.reason = step, method, hyperparameters or {}, reason

    def should_switch(self, state: TrainerState) -> Switch | None:
        if state.step >= self.step and not any(s["to"] == self.method for s in state.switches):
            return Switch(self.method, self.hyperparameters, self.reason)
        return None
