"""Training throughput of metapeft's engine against a bare PyTorch + PEFT loop, and model FLOP utilisation.

For every zoo method, both loops train all-MiniLM-L6-v2 + mean-pooling head on the same real sentences (sst2
texts, packed to exactly SEQ tokens so that padding cannot differ), with the same batch size, the same AdamW
and the same gradient clipping, in the same process, alternating engine/bare/engine/bare. Throughput counts
training tokens per second of optimisation steps (evaluation excluded). MFU = achieved FLOP/s over the peak of
an fp32 matmul measured here, with FLOPs per token = 2N forward + 2N backward through activations + 2N_w for
weight gradients of trained matrices (N = non-embedding matmul parameters) plus attention score FLOPs.

    uv run python benchmarks/train_throughput.py [--steps 20] [--batch 32] [--seq 64] [--methods lora,ia3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from metapeft._backbone import backbone_info, load_tokenizer
from metapeft._environment import quiet_libraries
from metapeft.methods import get_method, list_methods
from metapeft.tasks import Split, Task, load_task
from metapeft.training import RunConfig, build_classifier, fit


def packed_task(seq: int, n: int) -> Task:
    """Real sst2 sentences concatenated until each example holds at least ``seq`` tokens."""
    source = load_task("example")
    tok = load_tokenizer(None)
    texts, labels, buf = [], [], []
    for text, label in zip(source.train.texts * 20, source.train.labels * 20):
        buf.append(text)
        if len(tok(" ".join(buf))["input_ids"]) >= seq:
            texts.append(" ".join(buf))
            labels.append(label)
            buf = []
        if len(texts) == n:
            break
    split = Split(texts, labels)
    return Task("sst2-packed", source.label_names, split, Split(texts[:64], labels[:64]))


def bare_loop(method, config, task: Task, steps: int, batch: int, seq: int) -> float:
    """What a user would write by hand with transformers + peft: tokens/s."""
    tok = load_tokenizer(None)
    torch.manual_seed(0)
    model = build_classifier(method, config, backbone_info(None), task.num_labels, None)
    enc = tok(task.train.texts, truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
    labels = torch.tensor(task.train.labels)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    elapsed, tokens = 0.0, 0
    for step in range(steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % len(labels)
        started = time.perf_counter()
        logits = model(enc["input_ids"][idx], enc["attention_mask"][idx], enc.get("token_type_ids")[idx])
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if method.on_step is not None:
            method.on_step(model.encoder, step + 1)
        opt.zero_grad(set_to_none=True)
        elapsed += time.perf_counter() - started  # every step counted, as the engine counts them
        tokens += int(enc["attention_mask"][idx].sum())
    return tokens / elapsed


def engine(method, config, task: Task, steps: int, seq: int) -> float:
    result = fit(
        task,
        method,
        config,
        backbone_info(None),
        RunConfig(eval_size=16, eval_points=1),
        max_length=seq,
        device=torch.device("cpu"),
    )
    return result.metrics["tokens_per_s"]


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def flops_per_token(method, config, seq: int) -> float:
    """Training FLOPs per real (non-virtual) token."""
    info = backbone_info(None)
    d, layers = info.hidden_size, info.num_layers
    n_matmul = layers * (4 * d * d + 2 * d * 4 * d)
    positions = seq + (config.num_virtual_tokens if method.name in ("prompt_tuning", "p_tuning") else 0)
    keys = positions + (config.num_virtual_tokens if method.name == "prefix_tuning" else 0)
    forward = 2 * n_matmul + layers * 2 * (2 * keys * d)  # matmuls + QK^T and AV (2 FLOPs per multiply-add)
    if method.kind == "head":
        per_position = forward  # frozen encoder: no backward pass through it at all
    else:  # backward through activations costs another forward; full fine-tuning adds weight gradients
        per_position = 2 * forward + (2 * n_matmul if method.kind == "full" else 0)
    return per_position * positions / seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating engine/bare measurements per method")
    parser.add_argument("--methods", default=",".join(m.name for m in list_methods()))
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    quiet_libraries()
    task = packed_task(args.seq, args.batch * args.steps)
    peak = matmul_peak()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"{'method':<16} {'engine tok/s':>13} {'bare tok/s':>11} {'ratio':>6} {'MFU':>6}")
    rows = []
    for name in args.methods.split(","):
        method = get_method(name)
        config = method.make_config({"max_steps": args.steps, "batch_size": args.batch, "warmup_ratio": 0.0})
        ours, bare = [], []
        bare_loop(method, config, task, 3, args.batch, args.seq)  # untimed warm-up: first-touch allocations
        for repeat in range(args.repeats):  # alternate which loop goes first, so drift hits both alike
            if repeat % 2:
                bare.append(bare_loop(method, config, task, args.steps, args.batch, args.seq))
            ours.append(engine(method, config, task, args.steps, args.seq))
            if not repeat % 2:
                bare.append(bare_loop(method, config, task, args.steps, args.batch, args.seq))
        o, b = statistics.median(ours), statistics.median(bare)
        mfu = o * flops_per_token(method, config, args.seq) / peak
        rows.append(
            {
                "method": name,
                "engine_tokens_per_s": round(o, 1),
                "bare_tokens_per_s": round(b, 1),
                "ratio": round(o / b, 3),
                "mfu": round(mfu, 4),
            }
        )
        print(f"{name:<16} {o:>13.0f} {b:>11.0f} {o / b:>6.3f} {100 * mfu:>5.1f}%")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"peak_flops": peak, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
