"""The training loop.

A plain PyTorch loop rather than ``transformers.Trainer``: the head sits outside the peft model, AdaLoRA needs
a hook between ``optimizer.step`` and ``zero_grad``, runs stop on a wall-clock budget, and learning curves are
taken at fixed fractions of the budget. Those are four Trainer callbacks and a custom ``compute_loss``; the
loop below is shorter, and ``benchmarks/train_throughput.py`` checks it costs nothing against a bare loop.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._backbone import BackboneInfo, load_encoder, load_tokenizer
from ..experience import pack_outcomes
from ..methods import Method, MethodConfig, with_default_steps
from ..tasks import Split, Task, stratified_indices
from ._callbacks import TimeBudget, TrainerCallback, TrainerState
from ._clock import StepClock
from ._config import RunConfig
from ._memory import MemoryCount
from ._model import TextClassifier


@dataclass
class FitResult:
    model: TextClassifier
    metrics: dict
    curve: list[dict] = field(default_factory=list)
    stopped_by: str = "max_steps"  # or the reason of the callback's Stop: "time_budget", "should_stop", ...
    method: Method | None = None  # the method trained last (another than the one started with after a switch)
    config: MethodConfig | None = None


class Batches:
    """Pre-tokenised examples, padded per batch to the longest member (no padding to max_length)."""

    def __init__(self, tokenizer, split: Split, max_length: int):
        encoded = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
        self.input_ids = encoded["input_ids"]
        self.token_type_ids = encoded.get("token_type_ids")
        self.labels = torch.tensor(split.labels)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices, device) -> dict[str, torch.Tensor]:
        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if self.token_type_ids is not None else None
        for j, (i, row) in enumerate(zip(indices, rows)):
            ids[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1
            if types is not None:
                types[j, : len(row)] = torch.tensor(self.token_type_ids[i])
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if types is not None:
            batch["token_type_ids"] = types.to(device)
        return batch


def build_classifier(
    method: Method,
    config: MethodConfig,
    backbone: BackboneInfo,
    num_labels: int,
    model: str | None,
    trust_remote_code: bool = False,
    normalize: bool = False,
) -> TextClassifier:
    """Encoder wrapped by the method (peft, all trainable, or frozen) plus a fresh head (on L2-normalised embeddings
    with ``normalize``)."""
    from peft import TaskType, get_peft_model

    encoder = load_encoder(model, trust_remote_code)
    if method.kind == "peft":
        peft_config = method.build(config, backbone)
        peft_config.task_type = TaskType.FEATURE_EXTRACTION
        encoder = get_peft_model(encoder, peft_config)
    else:
        encoder.requires_grad_(method.kind == "full")
    return TextClassifier(
        encoder, num_labels, backbone.hidden_size, prompt_learning=method.prompt_learning, normalize=normalize
    )


def fit(
    task: Task,
    method: Method,
    config: MethodConfig,
    backbone: BackboneInfo,
    run: RunConfig,
    *,
    max_length: int,
    device: torch.device,
    callbacks: Sequence[TrainerCallback] = (),
    pool: Split | None = None,
) -> FitResult:
    """Train ``method`` on ``task`` and evaluate at ``run.eval_points`` evenly spaced steps (the learning curve).

    Evaluation uses a seeded stratified subset of the held-out split of ``run.eval_size`` examples (0 = all of it),
    never its first rows; the last evaluation uses ``run.final_eval_size`` examples instead when that is more: on
    300 examples the sampling noise alone (sd ~2.3 points) hides most differences between methods, and a larger
    final set costs one evaluation, not one per curve point. ``callbacks`` (see ``_callbacks``) watch the run and may
    stop it; ``run.time_budget`` adds a :class:`TimeBudget`. A run stopped with a final :class:`Stop` is evaluated
    as finished at the step it reached; one stopped otherwise (a pruner) on the curve's examples: it was judged, not
    finished.

    The final evaluation keeps which examples the model got right (``metrics["outcomes"]["test"]``, a packed
    bitset in the evaluation sample's order) so that two runs scored on the same rows can be compared pairwise.
    ``pool``, when given, is scored too after the final evaluation (``pool_accuracy``, ``outcomes["pool"]``): rows
    of the task that no training sample uses, which make the comparison finer than the test file alone allows.
    ``run.sample_seed`` (default ``run.seed``) draws the evaluation sample, ``run.seed`` the initialisation and data
    order, so that runs of two training seeds are scored on the same rows.
    """
    seed, model = run.seed, run.model
    config = with_default_steps(config, len(task.train))
    _seed_everything(seed)
    sample_seed = seed if run.sample_seed is None else run.sample_seed
    tokenizer = load_tokenizer(model, run.trust_remote_code)
    train_data = Batches(tokenizer, task.train, max_length)

    def held_out(size: int) -> tuple[Batches, str]:
        """The evaluation sample and an id of its rows (runs with the same id were scored on the same rows)."""
        rows = (
            np.arange(len(task.test))
            if not size or size >= len(task.test)
            else np.sort(stratified_indices(task.test.labels, size, sample_seed))
        )
        rows_id = hashlib.sha256(task.fingerprint.encode() + rows.astype(np.int64).tobytes()).hexdigest()[:12]
        return Batches(tokenizer, task.test.select(rows), max_length), rows_id

    eval_size, final_eval_size = run.eval_size, run.final_eval_size
    eval_data, _ = held_out(eval_size)
    bigger = final_eval_size is not None and eval_size != 0 and (final_eval_size == 0 or final_eval_size > eval_size)
    final_data, final_id = (
        held_out(final_eval_size) if bigger else held_out(eval_size)
    )  # never fewer examples than the curve

    classifier = build_classifier(method, config, backbone, task.num_labels, model, run.trust_remote_code).to(device)
    steps = config.max_steps
    optimizer, schedule, trainable = _optimiser(classifier, config, steps, int(steps * config.warmup_ratio))
    eval_at = {
        max(1, math.ceil(steps * k / run.eval_points)) for k in range(1, run.eval_points + 1)
    }  # at or just after each fraction
    loss_fn = nn.CrossEntropyLoss()
    order = _Order(len(train_data), config.batch_size, seed)

    memory = MemoryCount(device)
    callbacks = [memory, *([TimeBudget(run.time_budget)] if run.time_budget is not None else []), *callbacks]
    state = TrainerState(
        max_steps=steps, model=classifier, optimizer=optimizer, method=method.name, hyperparameters=config.as_dict()
    )
    outcomes: dict[str, str] = {}
    clock = StepClock()
    eval_time = 0.0
    tokens = 0
    running_loss, running_n = 0.0, 0
    stopped_by = "max_steps"
    phase_start = 0  # the step the current method started at (a switch starts another)
    for callback in callbacks:
        callback.on_train_begin(state)
    try:
        for step in range(1, steps + 1):
            state.step = step
            started, cpu_started = time.perf_counter(), time.process_time()
            classifier.train()
            indices = next(order)
            batch = train_data.collate(indices, device)
            labels = train_data.labels[indices].to(device)
            loss = loss_fn(classifier(**batch), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            for callback in callbacks:
                callback.on_optimizer_step(state)
            if method.on_step is not None:
                method.on_step(classifier.encoder, step - phase_start)
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            state.train_time_s += clock.add(time.perf_counter() - started, time.process_time() - cpu_started)
            tokens += int(batch["attention_mask"].sum())
            state.loss = loss.item()
            running_loss += state.loss
            running_n += 1
            stop = next((s for s in (c.should_stop(state) for c in callbacks) if s is not None), None)
            if (stop or step == steps) and method.on_end is not None:
                with torch.no_grad():
                    method.on_end(classifier.encoder)
            if step in eval_at or stop:
                started = time.perf_counter()
                final = step == steps or (stop is not None and stop.final)  # a pruned run is not a result
                data = final_data if final else eval_data
                accuracy, macro_f1, correct = evaluate(classifier, data, device)
                if final:
                    outcomes.update(test=pack_outcomes(correct), test_rows=final_id)
                eval_time += time.perf_counter() - started
                state.curve.append(
                    {
                        "step": step,
                        "fraction": round(step / steps, 4),
                        "train_loss": round(running_loss / running_n, 5),
                        "accuracy": accuracy,
                        "macro_f1": macro_f1,
                        "train_time_s": round(state.train_time_s, 3),
                        "eval_examples": len(data),
                        **({"method": state.method} if state.switches else {}),
                    }
                )
                running_loss, running_n = 0.0, 0
                for callback in callbacks:
                    callback.on_evaluate(state)
                switch = (
                    None
                    if stop or step == steps
                    else next((w for w in (c.should_switch(state) for c in callbacks) if w is not None), None)
                )
                if switch is not None:
                    method, config = _switch(
                        classifier, method, switch, backbone, steps - step, state, device, max_length
                    )
                    optimizer, schedule, trainable = _optimiser(
                        classifier,
                        config,
                        steps - step,
                        max(1, int((steps - step) * config.warmup_ratio)),
                        head_state=optimizer,
                    )
                    state.optimizer = optimizer
                    phase_start = step
                    if config.batch_size != order.batch_size:
                        order = _Order(len(train_data), config.batch_size, seed + step)
                    for callback in callbacks:
                        callback.on_switch(state)
            for callback in callbacks:
                callback.on_step_end(state)
            if stop:
                stopped_by = stop.reason
                break
    finally:
        for callback in callbacks:
            callback.on_train_end(state)

    curve, train_time, peak = state.curve, state.train_time_s, memory.memory
    pool_metrics = {}
    if pool is not None and len(pool) and "test" in outcomes:
        started = time.perf_counter()
        pool_accuracy, pool_f1, correct = evaluate(classifier, Batches(tokenizer, pool, max_length), device)
        eval_time += time.perf_counter() - started
        outcomes["pool"] = pack_outcomes(correct)
        pool_metrics = {"pool_accuracy": pool_accuracy, "pool_macro_f1": pool_f1, "pool_examples": len(pool)}
    trainable_params = sum(p.numel() for p in trainable)
    metrics = {
        "accuracy": curve[-1]["accuracy"],
        "macro_f1": curve[-1]["macro_f1"],
        "train_loss": curve[-1]["train_loss"],
        "train_time_s": round(train_time, 3),
        "eval_time_s": round(eval_time, 3),
        "peak_memory_mb": peak.peak_mb,
        "train_memory_mb": peak.growth_mb,
        "memory_measure": peak.measure,
        "trainable_params": trainable_params,
        "total_params": sum(p.numel() for p in classifier.parameters()),
        "steps": state.step,
        "tokens_per_s": round(tokens / train_time, 1) if train_time else None,
        "eval_examples": curve[-1]["eval_examples"],
        "max_length": max_length,
        **pool_metrics,
        "outcomes": outcomes,
        **({"suspended_s": round(clock.suspended_s, 1)} if clock.suspended_s else {}),
        # how much of its cores a CPU run got (under 0.8: others took them, its time is not the method's cost)
        **({"cpu_share": clock.cpu_share(torch.get_num_threads())} if device.type == "cpu" else {}),
        **state.metrics,
    }
    if state.switches:
        metrics["switches"] = _with_recovery(state.switches, curve, steps)
    return FitResult(classifier, metrics, curve, stopped_by, method, config)


def _optimiser(
    classifier: TextClassifier,
    config: MethodConfig,
    steps: int,
    warmup: int,
    head_state: torch.optim.Optimizer | None = None,
):
    """AdamW over the head and the encoder's trainable parameters (each with its rate), with a linear warm-up of
    ``warmup`` steps and a linear decay to 0 at ``steps``; and the trainable parameters (gradient clipping).

    At a switch, ``head_state`` is the optimiser so far: the head keeps its moments (it goes on learning the same
    mapping) while the new method's parameters start fresh. A fresh AdamW's first step moves every weight by the full
    rate whatever its gradient; on a 77- or 150-class head that halved the accuracy in one step and took 8-12 steps
    to recover (benchmarks/switching.py, BENCHMARKS.md)."""
    encoder_params = [p for p in classifier.encoder.parameters() if p.requires_grad]
    groups = [{"params": classifier.head.parameters(), "lr": config.head_learning_rate}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    if head_state is not None:
        for parameter in classifier.head.parameters():
            if parameter in head_state.state:
                optimizer.state[parameter] = head_state.state[parameter]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    )
    return optimizer, schedule, [p for p in classifier.parameters() if p.requires_grad]


def _switch(
    classifier: TextClassifier,
    current: Method,
    switch,
    backbone: BackboneInfo,
    remaining: int,
    state: TrainerState,
    device: torch.device,
    max_length: int,
) -> tuple[Method, MethodConfig]:
    """Merge-and-continue: fold ``current``'s adapter into the encoder's weights, keep the head, and wrap the encoder
    with the next method for the ``remaining`` steps (ReLoRA's merge, reset, warm-up; the head keeps its optimiser
    state, see ``_optimiser``). The model's predictions are the same before and after (the new adapter starts as the
    identity, or close to it)."""
    from peft import TaskType, get_peft_model

    from .._errors import MetapeftError
    from ..methods import get_method

    target = get_method(switch.method)
    if not current.mergeable:
        raise MetapeftError(
            f"cannot switch from {current.name}: its virtual tokens cannot be merged into the weights; start "
            "with a method that changes weights"
        )
    config = target.make_config({**switch.hyperparameters, "max_steps": remaining})
    target.check_compatible(config, backbone)
    if (
        target.prompt_learning
        and backbone.max_positions
        and max_length + getattr(config, "num_virtual_tokens", 0) > backbone.max_positions
    ):
        raise MetapeftError(
            f"cannot switch to {target.name}: {max_length} tokens and its virtual tokens exceed the model's "
            f"{backbone.max_positions} positions"
        )
    encoder = classifier.encoder
    if current.kind == "peft":
        if current.on_end is not None:  # e.g. AdaLoRA fixes its rank pattern before it is merged
            with torch.no_grad():
                current.on_end(encoder)
        encoder = encoder.merge_and_unload()
    encoder.requires_grad_(target.kind == "full")
    if target.kind == "peft":
        peft_config = target.build(config, backbone)
        peft_config.task_type = TaskType.FEATURE_EXTRACTION
        encoder = get_peft_model(encoder, peft_config)
    classifier.encoder = encoder.to(device)
    classifier.prompt_learning = target.prompt_learning
    state.method, state.hyperparameters = target.name, config.as_dict()
    state.switches.append(
        {
            "step": state.step,
            "from": current.name,
            "to": target.name,
            "reason": switch.reason,
            "p_better": switch.p_better,
            "accuracy_before": state.curve[-1]["accuracy"] if state.curve else None,
            "hyperparameters": config.as_dict(),
        }
    )
    return target, config


def _with_recovery(switches: list[dict], curve: list[dict], steps: int) -> list[dict]:
    """Each switch with the accuracy at the next curve point, the steps until the curve was back at its level before
    the switch (None: it never was) and those steps as a fraction of the steps that were left at the switch."""
    out = []
    for s in switches:
        after = [p for p in curve if p["step"] > s["step"]]
        back = next(
            (
                p["step"] - s["step"]
                for p in after
                if s["accuracy_before"] is not None and p["accuracy"] >= s["accuracy_before"]
            ),
            None,
        )
        left = steps - s["step"]
        out.append(
            {
                **s,
                "accuracy_after": after[0]["accuracy"] if after else None,
                "recovery_steps": back,
                "recovery_fraction": round(back / left, 4) if back is not None and left > 0 else None,
            }
        )
    return out


@torch.inference_mode()
def evaluate(
    classifier: TextClassifier, data: Batches, device: torch.device, batch_size: int = 128
) -> tuple[float, float, np.ndarray]:
    """Accuracy, macro-F1 and per-example correctness on ``data`` (batched by length: identical results, less
    padding)."""
    from sklearn.metrics import f1_score

    classifier.eval()
    by_length = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    predictions = torch.empty(len(data), dtype=torch.long)
    for start in range(0, len(data), batch_size):
        idx = by_length[start : start + batch_size]
        predictions[idx] = classifier(**data.collate(idx, device)).argmax(-1).cpu()
    y = data.labels.numpy()
    correct = predictions.numpy() == y
    return round(float(correct.mean()), 5), round(float(f1_score(y, predictions.numpy(), average="macro")), 5), correct


class _Order:
    """Endless seeded sequence of shuffled batches (reshuffled every epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, min(batch_size, n)
        self.rng = np.random.default_rng(seed)
        self.queue: list[int] = []

    def __next__(self) -> list[int]:
        if len(self.queue) < self.batch_size:
            self.queue = self.queue + self.rng.permutation(self.n).tolist()
        batch, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
        return batch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
