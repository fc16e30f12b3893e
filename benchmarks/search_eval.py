"""Meta-warm-started search against cold Optuna samplers, on tasks the meta-learner never saw (table benchmark).

Leave-one-task-out over the stored experience: the surrogate is fitted on every other task; each sampler then
searches the held-out task instance, where a proposed configuration is answered by the recorded run of that
instance nearest to it (same method, nearest settings in the surrogate's configuration features): a
*table benchmark* — many repeated searches at no training cost, every answer a real measured run. Reported per
sampler: best accuracy after 1, 3, 5, 10 trials relative to the instance's best recorded run, and trials needed
to reach 99% of it (searches that never reach it count as budget + 1).

    uv run python benchmarks/search_eval.py [--store sqlite:///.bench/prior.db] [--trials 20] [--seeds 3]

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

from metapeft.experience import ExperienceStore
from metapeft.meta import MetaPEFT, Surrogate
from metapeft.meta._features import cell_key, effective_max_length, task_group, usable
from metapeft.prior import experiences
from metapeft.search import MetaSampler, joint_space
from metapeft.search._space import to_config
from metapeft.search._space import BUDGET
from metapeft.search._tune import _suggest, warm_start_configs

CHECKPOINTS = (1, 3, 5, 10)


def search(sampler_name: str, runs, space, meta: MetaPEFT | None, surrogate: Surrogate | None, trials: int, seed: int) -> list[float]:
    profile = runs[0].profile
    methods = sorted({r.method for r in runs})
    enc = (surrogate or Surrogate()).encoder
    length = effective_max_length(runs[0], profile)
    coded = [enc.encode(r.method, r.hyperparameters, length) for r in runs]

    def answer(method: str, hp: dict):
        same = [i for i, r in enumerate(runs) if r.method == method]
        x = enc.encode(method, hp, length)
        return runs[min(same, key=lambda i: float(np.sum((coded[i] - x) ** 2)))]

    budget = {k: runs[0].hyperparameters[k] for k in BUDGET if k in runs[0].hyperparameters}  # the table's own budget
    if sampler_name == "meta":
        sampler = MetaSampler(surrogate, profile, methods, budget=budget, seed=seed)
    else:
        sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, warn_independent_sampling=False),
                   "gp": lambda: optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False),
                   "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[sampler_name]()  # fmt: skip
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if sampler_name == "meta":
        for params, source in warm_start_configs(meta, profile, methods, space, budget, 3):
            study.enqueue_trial(params, user_attrs={"source": source}, skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        run = answer(*to_config({name: _suggest(trial, name, dist) for name, dist in space.items()}))
        trial.set_user_attr("hyperparameters", run.hyperparameters)
        trial.set_user_attr("metrics", {k: run.metrics.get(k) for k in ("accuracy", "train_time_s", "peak_memory_mb", "max_length")})
        return float(run.metrics["accuracy"])

    study.optimize(objective, n_trials=trials)
    values = [t.value for t in study.trials]
    return list(np.maximum.accumulate(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="experience store with runs beyond the shipped prior")
    parser.add_argument("--no-prior", action="store_true")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samplers", default="meta,tpe,gp,random")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    store = ExperienceStore(args.store) if args.store else None
    records = [r for r in {r.id: r for r in experiences(store, include_prior=not args.no_prior, include_own=store is not None)}.values() if usable(r)]
    groups = sorted({task_group(r) for r in records})
    samplers = args.samplers.split(",")
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
            best = max(r.metrics["accuracy"] for r in runs)
            space = joint_space(sorted({r.method for r in runs}))
            for name in samplers:
                for seed in range(args.seeds if name != "meta" else 1):  # the meta search is deterministic given its data
                    curve = search(name, runs, space, meta, surrogate, args.trials, seed)
                    curves[name].append([v / best for v in curve])
        print(f"{n + 1}/{len(groups)} {held} ({time.time() - started:.0f} s)", flush=True)

    table = {}
    for name, cs in curves.items():
        reach = [next((i + 1 for i, v in enumerate(c) if v >= 0.99), args.trials + 1) for c in cs]
        table[name] = {
            **{f"after_{k}": round(float(np.mean([c[min(k, len(c)) - 1] for c in cs])), 4) for k in CHECKPOINTS if k <= args.trials},
            "median_trials_to_99pct": statistics.median(reach), "mean_trials_to_99pct": round(float(np.mean(reach)), 2), "searches": len(cs),
        }  # fmt: skip
    print(json.dumps({"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "tasks": len(groups), "runs": len(records),
                      "trials": args.trials, "samplers": table}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
