"""The backend seam: one interface over the frameworks that fine-tune a causal LM (torch + peft, MLX + mlx-lm).

A backend's lifecycle for one run, all inside :meth:`Backend.fit`:

1. :meth:`Backend.check` — the framework is installed and takes the method (one-line ``MetapeftError`` otherwise:
   the extra to install, or the methods it has);
2. load the base model (a Hugging Face folder: both frameworks read the same files, see
   ``metapeft model import-llama2c``) and attach the method with the method's validated config;
3. train ``config.max_steps`` steps of AdamW with linear warm-up and decay on the completion tokens, driving the
   trainer's callbacks (:class:`~metapeft.training.TrainerCallback`: a progress bar, a time budget, a pruner, the
   memory count) through :class:`Watch`, and evaluate at the end (:class:`CausalResult`: loss and perplexity of
   the held-out completions, exact match of greedy completions, step time, peak memory where the framework
   measures it);
4. save what was learned in the framework's own adapter format (peft's, or mlx-lm's ``adapters.safetensors`` +
   ``adapter_config.json``) when an output folder is given.

A subclass sets ``name``, ``extra`` and ``methods`` and overrides :meth:`_available`, :meth:`_fit` and
:meth:`evaluate`. The
shared parts — tokenising prompt/completion pairs, the schedule, checking — live here, so two backends given the
same task, config and seed see the same token ids in the same order.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from .._errors import MetapeftError
from ..methods import MethodConfig, get_method, with_default_steps


@dataclass
class CausalResult:
    """What a causal-LM run measured.

    Attributes:
        metrics: ``loss`` and ``perplexity`` of the held-out completions, ``exact_match`` of greedy completions,
            ``initial_loss`` (before training, same rows), ``train_loss_first`` / ``train_loss_last`` (means of the
            first and last 10 steps), ``step_time_s`` (median seconds per step), ``train_time_s``, ``steps``.
        losses: The training loss of every step.
        adapter_path: Where the adapter was saved (None when not saved).
        stopped_by: "max_steps", or the reason of the callback's ``Stop`` that ended the run.
    """

    backend: str
    method: str
    metrics: dict
    losses: list[float] = field(default_factory=list)
    adapter_path: str | None = None
    stopped_by: str = "max_steps"

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_MAX_LENGTH = 256  # tokens per row when the method's config sets no max_length


def encode(tokenizer, rows: list[tuple[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """Each (prompt, completion) as (token ids with BOS, index of the first completion token): the loss counts the
    completion's tokens only. A row over ``max_length`` loses the start of its prompt (BOS kept), not its
    completion."""
    out = []
    for prompt, completion in rows:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion)["input_ids"]
        start = min(len(prompt_ids), len(ids) - 1)
        if len(ids) > max_length:
            cut = len(ids) - max_length
            keep = 1 if ids[:1] == prompt_ids[:1] and prompt_ids else 0  # BOS
            ids = ids[:keep] + ids[keep + cut :]
            start = max(keep, start - cut)
        out.append((ids, start))
    return out


def lr_at(step: int, config: MethodConfig) -> float:
    """The learning rate after ``step`` steps: linear warm-up over ``warmup_ratio`` of the steps, then linear decay."""
    warmup = max(1, int(config.max_steps * config.warmup_ratio))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    return config.learning_rate * max(0.0, (config.max_steps - step) / max(1, config.max_steps - warmup))


def batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Row indices of each step: seeded shuffles of the training rows, one epoch after another."""
    rng, order, out = random.Random(seed), [], []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


class Watch:
    """The trainer's callbacks over a backend's loop, in the lifecycle of :mod:`metapeft.training` less its curve
    points and switches (a causal run is evaluated once, at the end): ``on_train_begin``; per step
    ``on_optimizer_step`` (call :meth:`step` after the optimiser's step, gradients still present), ``should_stop``,
    ``on_step_end``; ``on_train_end`` (:meth:`end`)."""

    def __init__(self, callbacks: Sequence, max_steps: int, method: str, model=None, optimizer=None):
        from ..training import TrainerState

        self.callbacks = list(callbacks)
        self.state = TrainerState(max_steps=max_steps, model=model, optimizer=optimizer, method=method)
        self.stopped_by = "max_steps"
        for callback in self.callbacks:
            callback.on_train_begin(self.state)

    def step(self, step: int, loss: float, seconds: float) -> bool:
        """Report a step (1-based) of ``seconds``; True when a callback stops the run."""
        state = self.state
        state.step, state.loss, state.train_time_s = step, loss, state.train_time_s + seconds
        for callback in self.callbacks:
            callback.on_optimizer_step(state)
        stop = next((s for c in self.callbacks if (s := c.should_stop(state)) is not None), None)
        for callback in self.callbacks:
            callback.on_step_end(state)
        if stop is not None:
            self.stopped_by = stop.reason
        return stop is not None

    def end(self) -> None:
        for callback in self.callbacks:
            callback.on_train_end(self.state)


class Backend(ABC):
    """A framework that fine-tunes causal LMs (module docstring: the lifecycle, and what a subclass overrides)."""

    name: ClassVar[str]
    extra: ClassVar[str | None] = None  # the optional extra that installs it
    methods: ClassVar[tuple[str, ...]]

    def check(self, method: str) -> None:
        """Raise a one-line ``MetapeftError`` unless the framework is installed and has ``method``."""
        if not self._available():
            raise MetapeftError(f"--backend {self.name} needs its framework: pip install 'metapeft[{self.extra}]'")
        if method not in self.methods:
            raise MetapeftError(f"--backend {self.name} has no method {method!r}; it has: {', '.join(self.methods)}")

    def fit(
        self,
        task,
        method: str,
        hyperparameters: dict | None,
        model: str | Path,
        *,
        seed: int = 0,
        eval_size: int = 200,
        output: str | Path | None = None,
        callbacks: Sequence = (),
    ) -> CausalResult:
        """Train ``method`` on ``task`` (a :class:`~metapeft.tasks.CausalTask`) from ``model`` and evaluate it.

        Args:
            task: The task.
            method: A method of :attr:`methods`.
            hyperparameters: The method's settings (validated by its config: ``r``, ``learning_rate``,
                ``max_steps``…).
            model: A Hugging Face Llama-family folder.
            seed: Initialisation and data order.
            eval_size: Held-out rows evaluated (the first ones; 0 = all).
            output: Folder to save the adapter to (None: not saved).
            callbacks: :class:`~metapeft.training.TrainerCallback` objects that watch the run and may stop it.

        Returns:
            A :class:`CausalResult`.
        """
        self.check(method)
        config = with_default_steps(get_method(method).make_config(hyperparameters or {}), len(task.train))
        model = Path(model).expanduser()
        if not (model / "config.json").is_file():
            raise MetapeftError(
                f"{model}: not a Hugging Face model folder (no config.json); "
                "convert a llama2.c checkpoint with `metapeft model import-llama2c`"
            )
        test = task.test if not eval_size else task.test[:eval_size]
        return self._fit(
            task,
            test,
            method,
            config,
            model,
            seed,
            Path(output) if output else None,
            list(callbacks),
        )

    @abstractmethod
    def evaluate(
        self, task, model: str | Path, adapter_path: str | Path | None = None, *, eval_size: int = 200
    ) -> dict:
        """Held-out ``loss`` and ``exact_match`` of ``model`` with what :meth:`fit` saved to ``adapter_path``
        loaded back in the framework's own way (the adapter contract: the same figures as the run measured)."""

    @abstractmethod
    def _available(self) -> bool:
        """Whether the framework imports."""

    @abstractmethod
    def _fit(
        self,
        task,
        test: list[tuple[str, str]],
        method: str,
        config: MethodConfig,
        model: Path,
        seed: int,
        output: Path | None,
        callbacks: list,
    ) -> CausalResult:
        """Load, attach, train, evaluate and save (module docstring)."""


def summarise(
    losses: list[float], step_times: list[float], initial_loss: float, loss: float, exact: float, **extra
) -> dict:
    """The metrics every backend reports (see :class:`CausalResult`), and ``extra`` ones of its own."""
    times = sorted(step_times)
    return {
        **extra,
        "initial_loss": initial_loss,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "exact_match": exact,
        "train_loss_first": sum(losses[:10]) / max(1, len(losses[:10])),
        "train_loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "step_time_s": times[len(times) // 2] if times else None,
        "train_time_s": sum(step_times),
        "steps": len(losses),
    }
