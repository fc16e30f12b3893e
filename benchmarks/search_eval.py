"""Meta-warm-started search against cold Optuna samplers, on tasks the meta-learner never saw (table benchmark).

Leave-one-task-out over the stored experience: the surrogate is fitted on every other task; each sampler then
searches the held-out task instance, where a proposed configuration is answered by the recorded run of that
instance nearest to it (same method, nearest settings in the surrogate's configuration features): a
*table benchmark* — many repeated searches at no training cost, every answer a real measured run. Reported per
sampler: best accuracy after 1, 3, 5, 10 trials relative to the instance's best recorded run, and trials needed
to reach 99% of it (searches that never reach it count as budget + 1). With ``--objectives`` naming several,
the searches are multi-objective and the measure is the hypervolume of the trials so far relative to that of
all the instance's recorded runs (losses: 1 − accuracy, log time, log memory, scaled to [0, 1] over the
instance's runs; reference point 1.1).

    uv run python benchmarks/search_eval.py [--store sqlite:///.bench/prior.db] [--trials 20] [--seeds 3]
    uv run python benchmarks/search_eval.py --objectives accuracy,train_time_s,peak_memory_mb --trials 30

While the experience holds one setting per method (defaults), this measures method selection by search; with the
Sobol passes it measures settings too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections import defaultdict

import numpy as np
import optuna

from metapeft.experience import ExperienceStore, cell_key, task_group, usable
from metapeft.meta import MetaPEFT, Surrogate
from metapeft.meta._features import effective_max_length
from metapeft.methods import BUDGET_FIELDS
from metapeft.prior import experiences
from metapeft.search import MetaSampler, joint_space
from metapeft.search._space import to_config
from metapeft.search._tune import _suggest, warm_start_configs

CHECKPOINTS = (1, 3, 5, 10, 20, 30)


def losses(metrics: list[dict], objectives, scale: list[dict] | None = None) -> np.ndarray:
    """(n, k) losses of runs' metrics (1 − accuracy, log time, log memory), scaled to [0, 1] over ``scale``'s runs
    (by default the runs themselves)."""
    cols = {
        "accuracy": lambda m: 1 - m["accuracy"],
        "train_time_s": lambda m: np.log(m["train_time_s"]),
        "peak_memory_mb": lambda m: np.log(m["peak_memory_mb"]),
    }
    raw = lambda ms: np.array(  # noqa: E731
        [[cols[o](m) for o in objectives] for m in ms], float
    ).reshape(len(ms), len(objectives))
    x, ref = raw(metrics), raw(scale if scale is not None else metrics)
    lo, hi = ref.min(0), ref.max(0)
    return (x - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)


def hypervolume(points: np.ndarray) -> float:
    # Optuna's exact WFG hypervolume (not re-exported publicly; used by its own hypervolume-history plot)
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(points, np.full(points.shape[1], 1.1)))


def search(
    sampler_name: str,
    runs,
    space,
    meta: MetaPEFT | None,
    surrogate: Surrogate | None,
    trials: int,
    seed: int,
    objectives: tuple[str, ...] = ("accuracy",),
) -> list[float]:
    profile = runs[0].profile
    methods = sorted({r.method for r in runs})
    enc = (surrogate or Surrogate()).encoder
    length = effective_max_length(runs[0], profile)
    coded = [enc.encode(r.method, r.hyperparameters, length) for r in runs]

    def answer(method: str, hp: dict):
        same = [i for i, r in enumerate(runs) if r.method == method]
        x = enc.encode(method, hp, length)
        return runs[min(same, key=lambda i: float(np.sum((coded[i] - x) ** 2)))]

    budget = {
        k: runs[0].hyperparameters[k] for k in BUDGET_FIELDS if k in runs[0].hyperparameters
    }  # the table's own budget
    if sampler_name == "meta":
        sampler = MetaSampler(surrogate, profile, methods, objectives, budget=budget, seed=seed)
    else:
        sampler = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, warn_independent_sampling=False),
            "gp": lambda: optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }[sampler_name]()
    study = optuna.create_study(
        directions=["maximize" if o == "accuracy" else "minimize" for o in objectives], sampler=sampler
    )
    if sampler_name == "meta":
        for params, source in warm_start_configs(meta, profile, methods, space, budget, 3):
            study.enqueue_trial(params, user_attrs={"source": source}, skip_if_exists=True)

    chosen: list[int] = []

    def objective(trial: optuna.Trial):
        run = answer(*to_config({name: _suggest(trial, name, dist) for name, dist in space.items()}))
        chosen.append(runs.index(run))
        trial.set_user_attr("hyperparameters", run.hyperparameters)
        trial.set_user_attr(
            "metrics", {k: run.metrics.get(k) for k in ("accuracy", "train_time_s", "peak_memory_mb", "max_length")}
        )
        return tuple(float(run.metrics[o]) for o in objectives)

    study.optimize(objective, n_trials=trials)
    if len(objectives) == 1:
        return list(np.maximum.accumulate([t.values[0] for t in study.trials]))
    loss = losses([r.metrics for r in runs], objectives)
    full = hypervolume(loss)
    return [hypervolume(loss[chosen[: k + 1]]) / full for k in range(len(chosen))]


def summarise(curves: dict[str, list[list[float]]], trials: int) -> dict[str, dict]:
    """Per sampler: mean best-so-far (relative) after each checkpoint, and trials to reach 99% (never: trials + 1)."""
    table = {}
    for name, cs in curves.items():
        reach = [next((i + 1 for i, v in enumerate(c) if v >= 0.99), trials + 1) for c in cs]
        table[name] = {
            **{
                f"after_{k}": round(float(np.mean([c[min(k, len(c)) - 1] for c in cs])), 4)
                for k in CHECKPOINTS
                if k <= trials
            },
            "median_trials_to_99pct": statistics.median(reach),
            "mean_trials_to_99pct": round(float(np.mean(reach)), 2),
            "searches": len(cs),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="experience store with runs beyond the shipped prior")
    parser.add_argument("--no-prior", action="store_true")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samplers", default="meta,tpe,gp,random")
    parser.add_argument("--objectives", default="accuracy")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    store = ExperienceStore(args.store) if args.store else None
    records = [
        r for r in experiences(store, include_prior=not args.no_prior, include_own=store is not None) if usable(r)
    ]
    groups = sorted({task_group(r) for r in records})
    samplers = args.samplers.split(",")
    objectives = tuple(args.objectives.split(","))
    if len(objectives) > 1:
        records = [r for r in records if all(r.metrics.get(o) for o in objectives)]
    curves: dict[str, list[list[float]]] = defaultdict(list)
    started = time.time()
    for n, held in enumerate(groups):
        train = [r for r in records if task_group(r) != held]
        surrogate = Surrogate().fit(train) if "meta" in samplers else None
        meta = MetaPEFT(surrogate=surrogate, experiences=train, include_own=False) if surrogate else None
        cells = defaultdict(list)
        for r in records:
            if task_group(r) == held:
                cells[cell_key(r)].append(r)
        for runs in cells.values():
            if len({r.method for r in runs}) < 2:
                continue
            best = (
                max(r.metrics["accuracy"] for r in runs) if len(objectives) == 1 else 1.0
            )  # hypervolume curves are relative already
            space = joint_space(sorted({r.method for r in runs}))
            for name in samplers:
                # the single-objective meta search is deterministic given its data; ParEGO draws its weightings
                for seed in range(args.seeds if name != "meta" or len(objectives) > 1 else 1):
                    curve = search(name, runs, space, meta, surrogate, args.trials, seed, objectives)
                    curves[name].append([v / best for v in curve])
        print(f"{n + 1}/{len(groups)} {held} ({time.time() - started:.0f} s)", flush=True)

    table = summarise(curves, args.trials)
    measure = (
        "best accuracy / instance best" if len(objectives) == 1 else "hypervolume / hypervolume of all recorded runs"
    )
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                "tasks": len(groups),
                "runs": len(records),
                "objectives": list(objectives),
                "measure": measure,
                "trials": args.trials,
                "samplers": table,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
