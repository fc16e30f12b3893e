"""The MLX backend for causal LMs, through mlx-lm: its model code and its LoRA/DoRA layers
(``mlx_lm.tuner.linear_to_lora_layers``), and adapters saved as mlx-lm saves them (``adapters.safetensors`` +
``adapter_config.json``), so that ``mlx_lm.load(model, adapter_path=...)`` loads them.

The loop is ours, not ``mlx_lm.tuner.train``: that one sorts examples by length into fixed batches and has no
per-step hook, while a run here must see the same rows in the same order as the torch backend (the shared
``batches``), report each step's loss to the trainer's callbacks, and use the same warm-up and decay.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from ..methods import MethodConfig
from ._base import DEFAULT_MAX_LENGTH, Backend, CausalResult, Watch, batches, encode, lr_at, summarise


class MLXBackend(Backend):
    name = "mlx"
    extra = "mlx"
    methods = ("lora", "dora", "full_finetuning")

    def _available(self) -> bool:
        return importlib.util.find_spec("mlx") is not None and importlib.util.find_spec("mlx_lm") is not None

    def _fit(
        self,
        task,
        test,
        method: str,
        config: MethodConfig,
        model: Path,
        seed: int,
        output: Path | None,
        callbacks: list,
    ) -> CausalResult:
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx.utils import tree_flatten
        from mlx_lm import load
        from mlx_lm.tuner.utils import linear_to_lora_layers

        from .._backbone import backbone_info
        from ..methods import target_modules
        from ..training import StepClock

        mx.random.seed(seed)
        lm, wrapper = load(str(model))
        tokenizer = getattr(wrapper, "_tokenizer", wrapper)
        lm.freeze()
        adapter_config = {"fine_tune_type": "full", "num_layers": len(lm.layers)}
        if method in ("lora", "dora"):
            keys = target_modules(config.target_modules, backbone_info(str(model)), method)  # e.g. self_attn.q_proj
            parameters = {
                "rank": config.r,
                "scale": config.lora_alpha / config.r,
                "dropout": config.lora_dropout,
                "keys": keys,
            }
            linear_to_lora_layers(lm, len(lm.layers), parameters, use_dora=method == "dora")
            adapter_config = {"fine_tune_type": method, "num_layers": len(lm.layers), "lora_parameters": parameters}
        else:
            lm.unfreeze()
        max_length = config.max_length or DEFAULT_MAX_LENGTH
        train_rows, test_rows = encode(tokenizer, task.train, max_length), encode(tokenizer, test, max_length)

        initial = _held_out_loss(lm, test_rows)
        optimiser = optim.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay, bias_correction=True
        )  # as torch's AdamW
        step_fn = nn.value_and_grad(lm, _loss_mean)
        losses, times, clock = [], [], StepClock()
        watch = Watch(callbacks, config.max_steps, method, lm, optimiser)
        mx.reset_peak_memory()
        lm.train()
        try:
            for step, index in enumerate(batches(len(train_rows), config.batch_size, config.max_steps, seed)):
                started = time.perf_counter()
                optimiser.learning_rate = lr_at(step, config)
                loss, grads = step_fn(lm, *_collate([train_rows[i] for i in index]))
                optimiser.update(lm, grads)
                mx.eval(lm.parameters(), optimiser.state, loss)
                times.append(clock.add(time.perf_counter() - started))
                losses.append(loss.item())
                if watch.step(step + 1, losses[-1], times[-1]):
                    break
        finally:
            watch.end()
        # MLX's allocator peak (all arrays, the weights included): not comparable with the torch backend's tensor count
        extra = {
            "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
            "memory_measure": "mlx_allocator",
            "trainable_params": sum(v.size for _, v in tree_flatten(lm.trainable_parameters())),
        }
        loss, exact = _held_out_loss(lm, test_rows), _exact_match(lm, tokenizer, test, test_rows)
        adapter_path = None
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            mx.save_safetensors(str(output / "adapters.safetensors"), dict(tree_flatten(lm.trainable_parameters())))
            (output / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
            adapter_path = str(output)
        metrics = summarise(losses, times, initial, loss, exact, **extra)
        if clock.suspended_s:
            metrics["suspended_s"] = round(clock.suspended_s, 1)
        return CausalResult(self.name, method, metrics, losses, adapter_path, watch.stopped_by)

    def evaluate(
        self, task, model: str | Path, adapter_path: str | Path | None = None, *, eval_size: int = 200
    ) -> dict:
        """Held-out ``loss`` and ``exact_match`` of ``model`` with an adapter mlx-lm saved loaded (``mlx_lm.load``)."""
        from mlx_lm import load

        lm, wrapper = load(str(model), adapter_path=str(adapter_path) if adapter_path else None)
        tokenizer = getattr(wrapper, "_tokenizer", wrapper)
        test = task.test if not eval_size else task.test[:eval_size]
        rows = encode(tokenizer, test, DEFAULT_MAX_LENGTH)
        return {"loss": _held_out_loss(lm, rows), "exact_match": _exact_match(lm, tokenizer, test, rows)}


def _collate(rows):
    import mlx.core as mx
    import numpy as np

    width = max(len(ids) for ids, _ in rows)
    ids = np.zeros((len(rows), width), np.int32)
    for j, (row, _) in enumerate(rows):
        ids[j, : len(row)] = row
    return mx.array(ids), mx.array([s for _, s in rows]), mx.array([len(r) for r, _ in rows])


def _loss_sum(model, ids, starts, lengths):
    """Summed cross-entropy of the completion tokens, and their count."""
    import mlx.core as mx
    import mlx.nn as nn

    logits = model(ids[:, :-1])
    position = mx.arange(1, ids.shape[1])[None, :]  # the target of column t is token t + 1
    mask = (position >= starts[:, None]) & (position < lengths[:, None])
    ce = nn.losses.cross_entropy(logits, ids[:, 1:]) * mask
    return ce.astype(mx.float32).sum(), mask.sum()


def _loss_mean(model, ids, starts, lengths):
    total, count = _loss_sum(model, ids, starts, lengths)
    return total / count


def _held_out_loss(lm, rows) -> float:
    lm.eval()
    total = count = 0.0
    for i in range(0, len(rows), 32):
        s, n = _loss_sum(lm, *_collate(rows[i : i + 32]))
        total, count = total + s.item(), count + n.item()
    lm.train()
    return total / max(1.0, count)


def _exact_match(lm, tokenizer, test, rows) -> float:
    """Share of held-out rows whose greedy completion (as many tokens as the reference's) is the reference."""
    import mlx.core as mx

    lm.eval()
    hits = 0
    for (prompt, completion), (ids, start) in zip(test, rows):
        current = list(ids[:start])
        for _ in range(len(ids) - start):
            current.append(int(mx.argmax(lm(mx.array([current]))[0, -1]).item()))
        hits += tokenizer.decode(current[start:], skip_special_tokens=True).strip() == completion.strip()
    lm.train()
    return hits / max(1, len(test))
