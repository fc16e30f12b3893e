"""Torch against MLX on the same CPU (issue 24): LoRA on stories260K, 200 steps, on causal-LM tasks.

The model is ``../shared/models/stories260K`` imported with ``metapeft model import-llama2c``. Tasks: sst2-mini
and the reference suite's trec6, verbalised (prompt ``text\\nLabel:``, completion the label name), 512 training
rows, the first 200 held-out rows. Each backend trains LoRA (r 8, alpha 16, every linear layer, learning rate
5e-3, batch 8, 200 steps, seed 0) with one thread; runs alternate torch, MLX, torch, MLX so that drift in the
machine's load hits both. Reported: held-out completion loss before and after (the drop in %), exact match, and
the median step time, MLX over torch.

    uv run --extra mlx python benchmarks/backends.py            # appends to benchmarks/results/backends.jsonl
    uv run python benchmarks/backends.py --summary
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

OUT = Path(__file__).parent / "results" / "backends.jsonl"
SHARED = Path(os.environ.get("METAPEFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SETTINGS = {
    "max_steps": 200,
    "batch_size": 8,
    "learning_rate": 5e-3,
    "r": 8,
    "lora_alpha": 16,
    "target_modules": "all-linear",
}


def summary(lines: list[dict]) -> str:
    rows = [
        "| task | backend | runs | held-out loss before → after | drop | exact match | median step (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    steps = {}
    for task in sorted({r["task"] for r in lines}):
        for backend in ("torch", "mlx"):
            runs = [r for r in lines if r["task"] == task and r["backend"] == backend]
            if not runs:
                continue
            m = [r["metrics"] for r in runs]
            before, after = statistics.mean(x["initial_loss"] for x in m), statistics.mean(x["loss"] for x in m)
            step = statistics.median(x["step_time_s"] for x in m)
            steps[(task, backend)] = step
            rows.append(
                f"| {task} | {backend} | {len(runs)} | {before:.3f} → {after:.3f} | "
                f"{100 * (1 - after / before):.0f}% | "
                f"{statistics.mean(x['exact_match'] for x in m):.3f} | {1000 * step:.0f} |"
            )
    ratios = [steps[(t, "mlx")] / steps[(t, "torch")] for t, b in steps if b == "torch" and (t, "mlx") in steps]
    if ratios:
        rows.append(f"\nMLX step time over torch's: {', '.join(f'{r:.2f}x' for r in ratios)} (goal ≤ 3x)")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tasks", default="sst2-mini,trec6")
    args = parser.parse_args()
    if args.summary:
        print(summary([json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from metapeft.backends import get_backend
    from metapeft.models import import_llama2c
    from metapeft.tasks import load_task, verbalise

    model = Path(tempfile.mkdtemp()) / "s260k"
    import_llama2c(SHARED / "models" / "stories260K", model)
    for name in args.tasks.split(","):
        task = verbalise(load_task("example" if name == "sst2-mini" else SHARED / "datasets" / name)).subsample(512)
        for repeat in range(args.repeats):
            for backend in ("torch", "mlx"):
                result = get_backend(backend).fit(task, "lora", SETTINGS, model, eval_size=200)
                line = {
                    "task": name,
                    "backend": backend,
                    "repeat": repeat,
                    "settings": SETTINGS,
                    "metrics": result.metrics,
                }
                OUT.parent.mkdir(parents=True, exist_ok=True)
                with OUT.open("a") as f:
                    f.write(json.dumps(line) + "\n")
                m = result.metrics
                print(
                    f"{name} {backend} #{repeat}: loss {m['initial_loss']:.3f} → {m['loss']:.3f}, exact "
                    f"{m['exact_match']:.3f}, step {1000 * m['step_time_s']:.0f} ms",
                    flush=True,
                )
    print(summary([json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    main()
