"""The torch backend for causal LMs: transformers' ``AutoModelForCausalLM`` with the method attached by peft (the
method's own ``build``, as the classification engine uses it) or fully trainable."""

from __future__ import annotations

import time
from pathlib import Path

from ..methods import MethodConfig, get_method
from ._base import DEFAULT_MAX_LENGTH, Backend, CausalResult, Watch, batches, encode, lr_at, summarise


class TorchBackend(Backend):
    name = "torch"
    extra = None
    methods = ("lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "full_finetuning")

    def _available(self) -> bool:
        return True

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
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .._backbone import backbone_info
        from ..training import MemoryCount, StepClock

        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        spec = get_method(method)
        if spec.kind == "peft":
            from peft import TaskType, get_peft_model

            backbone = backbone_info(str(model))
            spec.check_compatible(config, backbone)
            peft_config = spec.build(config, backbone)
            peft_config.task_type = TaskType.CAUSAL_LM
            lm = get_peft_model(lm, peft_config)
        max_length = config.max_length or DEFAULT_MAX_LENGTH
        train_rows, test_rows = encode(tokenizer, task.train, max_length), encode(tokenizer, test, max_length)
        initial = _held_out_loss(lm, tokenizer, test_rows)
        params = [p for p in lm.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        losses, times, clock = [], [], StepClock()
        memory = MemoryCount(torch.device("cpu"))
        watch = Watch([memory, *callbacks], config.max_steps, method, lm, optimiser)
        lm.train()
        try:
            for step, index in enumerate(batches(len(train_rows), config.batch_size, config.max_steps, seed)):
                started = time.perf_counter()
                for group in optimiser.param_groups:
                    group["lr"] = lr_at(step, config)
                ids, mask, labels = _collate([train_rows[i] for i in index], tokenizer)
                loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimiser.step()
                times.append(clock.add(time.perf_counter() - started))
                losses.append(loss.item())
                stop = watch.step(step + 1, losses[-1], times[-1])  # gradients still here: the memory count reads them
                optimiser.zero_grad(set_to_none=True)
                if stop:
                    break
        finally:
            watch.end()
        loss, exact = _held_out_loss(lm, tokenizer, test_rows), _exact_match(lm, tokenizer, test, test_rows)
        peak = memory.memory
        extra = {
            "peak_memory_mb": peak.peak_mb,
            "train_memory_mb": peak.growth_mb,
            "memory_measure": peak.measure,
            "trainable_params": sum(p.numel() for p in params),
        }
        adapter_path = None
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            lm.save_pretrained(output, safe_serialization=True)
            adapter_path = str(output)
        metrics = summarise(losses, times, initial, loss, exact, **extra)
        if clock.suspended_s:
            metrics["suspended_s"] = round(clock.suspended_s, 1)
        return CausalResult(self.name, method, metrics, losses, adapter_path, watch.stopped_by)

    def evaluate(
        self, task, model: str | Path, adapter_path: str | Path | None = None, *, eval_size: int = 200
    ) -> dict:
        """Held-out ``loss`` and ``exact_match`` of ``model`` with a saved adapter (peft's folder) or fully
        fine-tuned weights (a model folder) loaded."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        saved = Path(adapter_path) if adapter_path else None
        if saved is not None and (saved / "adapter_config.json").is_file():
            from peft import PeftModel

            lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), saved)
        else:
            lm = AutoModelForCausalLM.from_pretrained(saved or model)
        test = task.test if not eval_size else task.test[:eval_size]
        rows = encode(tokenizer, test, DEFAULT_MAX_LENGTH)
        return {"loss": _held_out_loss(lm, tokenizer, rows), "exact_match": _exact_match(lm, tokenizer, test, rows)}


def _collate(rows, tokenizer):
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (row, start) in enumerate(rows):
        ids[j, : len(row)] = torch.tensor(row)
        labels[j, start : len(row)] = torch.tensor(row[start:])
        mask[j, : len(row)] = 1
    return ids, mask, labels


def _held_out_loss(lm, tokenizer, rows) -> float:
    """Mean cross-entropy of the completion tokens."""
    import torch

    lm.eval()
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            ids, mask, labels = _collate(rows[i : i + 32], tokenizer)
            logits = lm(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :][:, :-1]  # virtual tokens first
            target = labels[:, 1:]
            keep = target != -100
            ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            total, count = total + float(ce), count + int(keep.sum())
    lm.train()
    return total / max(1.0, count)


def _exact_match(lm, tokenizer, test, rows) -> float:
    """Share of held-out rows whose greedy completion (as many tokens as the reference's) is the reference."""
    import torch

    lm.eval()
    hits = 0
    with torch.no_grad():
        for (prompt, completion), (ids, start) in zip(test, rows):
            current = list(ids[:start])
            for _ in range(len(ids) - start):
                current.append(int(lm(input_ids=torch.tensor([current])).logits[0, -1].argmax()))
            hits += tokenizer.decode(current[start:], skip_special_tokens=True).strip() == completion.strip()
    lm.train()
    return hits / max(1, len(test))
