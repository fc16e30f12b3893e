"""Meta-warm-started search against cold Optuna samplers with real training, on tasks the meta-learner never saw.

The real-training check of ``search_eval.py`` (a table benchmark): for each task, the meta-learner is fitted on the
shipped prior without that task (leave-one-task-out), then ``metapeft.search.tune`` searches the task once per
sampler, with the same number of trials and the same step budget, pruning as ``metapeft tune`` does by default
(median pruner on the learning curve) and scoring each trial's final accuracy on up to ``--final-eval-size``
held-out examples as ``tune`` does.
Reported per sampler: best accuracy after 1, 3, 5, 10 trials relative to the best any search found on that task,
trials needed to reach 99% of it, and the training seconds spent until then. With ``--objectives`` naming several
(no pruning then, as in ``tune``), the measure is the hypervolume of a search's trials so far relative to that of all
trials any search made on the task (losses 1 − accuracy, log time, log memory scaled to [0, 1] over those trials;
reference point 1.1), and ``--cold-trials`` gives the cold samplers a larger budget (the issue's "meta after 10
against cold TPE after 30"). Each finished search is one line of ``--out``; a restart skips those already there, so
the benchmark can be stopped and resumed.
``benchmarks/results/search_real.jsonl`` holds the searches of the fourth and fifth sessions, made before the
pruner was fed the curve (no trial was pruned) and with final accuracies on 300 examples; later searches go to
``search_real_v2.jsonl``.

    uv run python benchmarks/search_real.py --tasks trec50,atis,snips,tweet_emotion,financial_phrasebank --trials 10
    uv run python benchmarks/search_real.py --summary          # the table from what --out holds
    uv run python benchmarks/search_real.py --objectives accuracy,train_time_s,peak_memory_mb --cold-trials 30
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from search_eval import hypervolume, losses, summarise

from metapeft.experience import ExperienceStore, task_group, usable
from metapeft.meta import MetaPEFT
from metapeft.prior import PriorExperience
from metapeft.tasks import load_suite


def run_search(
    task, sampler: str, seed: int, meta: MetaPEFT, objectives: tuple[str, ...], n_trials: int, args
) -> dict:
    from metapeft.search import SearchConfig, tune
    from metapeft.training import RunConfig

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:  # adapters and the study are not kept: the trials go to --out
        run = RunConfig(eval_size=args.eval_size, final_eval_size=args.final_eval_size, track=False)
        config = SearchConfig(
            trials=n_trials,
            objectives=objectives,
            sampler=sampler,
            seed=seed,
            max_steps=args.max_steps,
            storage=f"sqlite:///{tmp}/optuna.db",
            output_dir=tmp,
            run=run,
        )
        result = tune(task, config, meta=meta, store=ExperienceStore(f"sqlite:///{tmp}/store.db"))
    trials = [
        {
            "number": t.number,
            "state": t.state,
            "method": t.method,
            "source": t.source,
            "accuracy": t.metrics.get("accuracy"),
            "train_time_s": t.metrics.get("train_time_s"),
            "peak_memory_mb": t.metrics.get("peak_memory_mb"),
            "eval_examples": t.metrics.get("eval_examples"),
            "hyperparameters": t.hyperparameters,
        }
        for t in result.trials
    ]
    return {
        "task": task.name,
        "sampler": sampler,
        "seed": seed,
        "objectives": list(objectives),
        "trials": trials,
        "wall_s": round(time.monotonic() - started, 1),
    }


def hypervolume_summary(lines: list[dict], objectives: tuple[str, ...], trials: int) -> dict:
    """Hypervolume curves relative to all trials on the task, and per task meta's after ``trials`` against each cold
    sampler's after its whole budget."""
    done = lambda t: t["state"] == "COMPLETE" and all(t.get(o) for o in objectives)  # noqa: E731
    pooled = defaultdict(list)
    for line in lines:
        pooled[line["task"]] += [t for t in line["trials"] if done(t)]
    curves, final, top = defaultdict(list), defaultdict(dict), defaultdict(dict)
    for line in lines:
        scale, ts = pooled[line["task"]], line["trials"]
        full = hypervolume(losses(scale, objectives))
        curve = [
            hypervolume(losses([t for t in ts[: k + 1] if done(t)], objectives, scale)) / full
            if any(done(t) for t in ts[: k + 1])
            else 0.0
            for k in range(len(ts))
        ]
        curves[line["sampler"]].append(curve)
        final[line["task"]].setdefault(line["sampler"], []).append(curve)
        # the hypervolume can grow from a cheap corner alone: the accuracy found is shown beside it
        acc = [t["accuracy"] if done(t) else 0.0 for t in ts]
        top[line["task"]].setdefault(line["sampler"], []).append((max(acc[:10]), max(acc)))
    per_task = {
        task: {
            name: {
                "after_10": round(float(np.mean([c[min(10, len(c)) - 1] for c in cs])), 4),
                "after_all": round(float(np.mean([c[-1] for c in cs])), 4),
                "trials": max(len(c) for c in cs),
                "best_accuracy_after_10": round(float(np.mean([a for a, _ in top[task][name]])), 4),
                "best_accuracy_after_all": round(float(np.mean([b for _, b in top[task][name]])), 4),
            }
            for name, cs in by.items()
        }
        for task, by in final.items()
    }
    return {
        "tasks": sorted(pooled),
        "measure": "hypervolume / hypervolume of all trials on the task",
        "samplers": summarise(curves, trials),
        "per_task": per_task,
        "curves": dict(curves),
    }


def plot_curves(curves: dict[str, list[list[float]]], ylabel: str, path: Path) -> None:
    """Each search's curve (thin) and the mean per sampler over the searches still running at that trial (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, cs), colour in zip(sorted(curves.items()), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        for c in cs:
            ax.plot(range(1, len(c) + 1), c, color=colour, alpha=0.25, lw=1)
        longest = max(len(c) for c in cs)
        mean = [np.mean([c[k] for c in cs if len(c) > k]) for k in range(longest)]
        ax.plot(range(1, longest + 1), mean, color=colour, lw=2.5, label=f"{name} (mean of {len(cs)})")
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(lines: list[dict], trials: int) -> dict:
    best = defaultdict(float)
    for line in lines:
        for t in line["trials"]:
            if t["state"] == "COMPLETE" and t["accuracy"] is not None:
                best[line["task"]] = max(best[line["task"]], t["accuracy"])
    curves, seconds = defaultdict(list), defaultdict(list)
    for line in lines:
        acc = [
            t["accuracy"] if t["state"] == "COMPLETE" and t["accuracy"] is not None else 0.0 for t in line["trials"]
        ][:trials]
        curve = list(np.maximum.accumulate(acc) / best[line["task"]])
        curves[line["sampler"]].append(curve)
        reach = next((i for i, v in enumerate(curve) if v >= 0.99), None)
        if reach is not None:
            seconds[line["sampler"]].append(sum(t["train_time_s"] or 0.0 for t in line["trials"][: reach + 1]))
    table = summarise(curves, trials)
    for name in table:
        table[name]["median_train_s_to_99pct_when_reached"] = (
            round(float(np.median(seconds[name])), 1) if seconds[name] else None
        )
    return {"tasks": sorted(best), "best_accuracy": dict(best), "samplers": table, "curves": dict(curves)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="../shared/datasets")
    parser.add_argument("--tasks", default="trec50,atis,snips,tweet_emotion,financial_phrasebank")
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="training examples drawn from each task (stratified, seed 0); 64 is the "
        "size the prior's pass 0 covers, so the search is tested where the meta-learner has experience",
    )
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--cold-trials", type=int, default=None, help="trials of each cold sampler's search (default: --trials)"
    )
    parser.add_argument(
        "--objectives", default="accuracy", help="comma-separated among accuracy, train_time_s, peak_memory_mb"
    )
    parser.add_argument("--samplers", default="meta,tpe,random")
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="searches per sampler and task, one per seed of the sampler's random draws",
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds --first-seed … --first-seed + --seeds − 1 (to split seeds between processes)",
    )
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument(
        "--eval-size", type=int, default=300, help="held-out examples of the learning curve (what the pruner reads)"
    )
    parser.add_argument(
        "--final-eval-size", type=int, default=1000, help="held-out examples of each trial's final accuracy"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out",
        default=None,
        help="default: benchmarks/results/search_real_v2.jsonl for accuracy searches, "
        "search_real_mo.jsonl for several objectives",
    )
    parser.add_argument("--summary", action="store_true", help="only print the table of what --out holds")
    parser.add_argument(
        "--hv-objectives",
        default=None,
        help="measure the hypervolume over these of the searches' objectives "
        "(a sensitivity check: how much of a difference one objective makes)",
    )
    parser.add_argument(
        "--plot", default=None, help="also draw each search's curve and the mean per sampler to this PNG"
    )
    args = parser.parse_args()
    objectives = tuple(args.objectives.split(","))
    out = Path(args.out or f"benchmarks/results/search_real_{'v2' if objectives == ('accuracy',) else 'mo'}.jsonl")
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    lines = [x for x in lines if tuple(x.get("objectives", ["accuracy"])) == objectives]
    if not args.summary:
        import torch

        warnings.simplefilter("ignore")
        torch.set_num_threads(args.threads)
        done = {(x["task"], x["sampler"], x["seed"]) for x in lines}
        entries = {e.name: e for e in load_suite(args.suite)}
        prior = [r for r in PriorExperience().records() if usable(r)]
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.tasks.split(","):
            task = entries[name].load().subsample(args.size, seed=0)
            meta = None
            for sampler in args.samplers.split(","):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    if (task.name, sampler, seed) in done:
                        continue
                    if meta is None:  # the held-out task's own runs stay out of the meta-learner
                        meta = MetaPEFT(
                            experiences=[r for r in prior if task_group(r) != name], include_own=False
                        )  # tune fits it
                    line = run_search(
                        task,
                        sampler,
                        seed,
                        meta,
                        objectives,
                        args.trials if sampler == "meta" else args.cold_trials or args.trials,
                        args,
                    )
                    best = max((t["accuracy"] or 0.0 for t in line["trials"]), default=0.0)
                    print(f"{name} {sampler} seed {seed}: best {best:.3f} in {line['wall_s']:.0f} s", flush=True)
                    with out.open("a") as f:
                        f.write(
                            json.dumps(
                                {
                                    **line,
                                    "machine": f"{platform.machine()}, {args.threads} torch threads",
                                    "size": args.size,
                                    "max_steps": args.max_steps,
                                    "eval_size": args.eval_size,
                                    "final_eval_size": args.final_eval_size,
                                    "prior_runs": len(prior),
                                }
                            )
                            + "\n"
                        )
                    lines.append(line)
    if objectives == ("accuracy",):
        table, ylabel = summary(lines, args.trials), "best accuracy so far / best on the task"
    else:
        measured = tuple(args.hv_objectives.split(",")) if args.hv_objectives else objectives
        table = hypervolume_summary(lines, measured, max(args.trials, args.cold_trials or 0))
        ylabel = f"hypervolume / all trials' ({len(measured)} objectives)"
    curves = table.pop("curves")
    if args.plot:
        plot_curves(curves, ylabel, Path(args.plot))
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
