"""Re-measure the memory of bench runs recorded before the engine counted tensor memory on CPU (in place).

Until 2026-11-21 the CPU engine recorded process RSS as ``peak_memory_mb``: ~2.2–2.5 GB for every method, a warm
worker's high-water mark, so the prior's memory told the methods apart by noise. Memory does not depend on what
the weights learn, only on the model, the method and its settings, the batch size and the batch's padded width;
the engine's peak is reached on the widest batch a run draws. So each run's figure is reproduced by the engine
itself: two training steps (``fit`` with max_steps=2: AdaLoRA scores ranks on a step before it prunes) on the
widest batch of the run's own seeded batch order.
The old figure stays in ``metrics["peak_rss_mb"]``; a re-measured record carries ``metrics["memory_measure"]`` (which
the meta-learner requires of a memory figure) and ``tags["memory_remeasured"]``.
Resumable (re-measured records are skipped) and safe to interrupt (each record is one small update).

    uv run python benchmarks/remeasure_memory.py sqlite:///.bench/prior.db ../shared/datasets
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from metapeft._backbone import backbone_info, load_tokenizer
from metapeft._environment import quiet_libraries
from metapeft.experience import ExperienceStore
from metapeft.methods import get_method
from metapeft.tasks import Task, load_suite
from metapeft.training import RunConfig, fit
from metapeft.training._engine import Batches, _Order


def widest_batch(task: Task, tokenizer, max_length: int, batch_size: int, steps: int, seed: int) -> list[int]:
    """The engine's batch order for ``seed`` (the same ``_Order``), and of its first ``steps`` batches the widest."""
    lengths = [len(ids) for ids in Batches(tokenizer, task.train, max_length).input_ids]
    order = _Order(len(lengths), batch_size, seed)
    return max((next(order) for _ in range(steps)), key=lambda batch: max(lengths[i] for i in batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("suite")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    quiet_libraries()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    store = ExperienceStore(args.store)
    entries = {e.name: e for e in load_suite(args.suite)}
    todo = [
        r
        for r in store.iter(status="finished")
        if r.tags.get("design")
        and not r.metrics.get("memory_measure")
        and r.environment.get("device", "cpu") == "cpu"
        and r.model == "all-MiniLM-L6-v2"
    ]
    todo.sort(key=lambda r: r.tags["suite_task"])
    todo = todo[: args.limit]
    print(f"{len(todo)} runs to re-measure", flush=True)
    tokenizer, backbone = load_tokenizer(None), backbone_info(None)
    full: dict[str, Task] = {}
    started = time.time()
    for n, record in enumerate(todo, 1):
        name = record.tags["suite_task"]
        if name not in full:
            full = {name: entries[name].load()}
        task = full[name].subsample(record.tags["train_size"], seed=record.seed)
        spec = get_method(record.method)
        config = spec.make_config(record.hyperparameters)
        rows = widest_batch(
            task, tokenizer, record.metrics["max_length"], config.batch_size, record.metrics["steps"], record.seed
        )
        batch = task.train.select(rows)
        one = Task(name=task.name, label_names=task.label_names, train=batch, test=batch)
        result = fit(
            one,
            spec,
            spec.make_config({**record.hyperparameters, "max_steps": 2}),
            backbone,
            RunConfig(seed=record.seed, eval_size=0, eval_points=1),
            max_length=record.metrics["max_length"],
            device=torch.device("cpu"),
        )
        metrics = {
            **record.metrics,
            "peak_rss_mb": record.metrics.get("peak_rss_mb", record.metrics["peak_memory_mb"]),
            "peak_memory_mb": result.metrics["peak_memory_mb"],
            "train_memory_mb": result.metrics["train_memory_mb"],
            "memory_measure": result.metrics["memory_measure"],
        }
        store.finish(
            record.id,
            metrics=metrics,
            tags={**record.tags, "memory_remeasured": "2026-11-21, benchmarks/remeasure_memory.py"},
        )
        if n % 10 == 0 or n == len(todo):
            print(
                f"{n}/{len(todo)} {name} {record.method}: {metrics['peak_rss_mb']:.0f} MB RSS → "
                f"{metrics['peak_memory_mb']:.0f} MB tensors "
                f"({time.time() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
