"""The learning-curve forecaster on held-out tasks (issue 21): do its 80% intervals cover 75–85% of final accuracies?

Five folds by task over the shipped prior (plus, with ``--store``, the curves bench's runs): the forecaster is fitted
on four fifths of the tasks and forecasts every curve point of the other fifth's runs. Reported per point of the
budget: the intervals' coverage of the final accuracy (measured on 1,000 held-out examples), the forecast's mean
absolute error, and that of the naive forecast "the final accuracy is the last one seen".

    uv run python benchmarks/forecast.py
    uv run python benchmarks/forecast.py --store sqlite:///$PWD/.bench/curves.db
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="another store of finished runs with curves (the curves bench)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "forecast.json"))
    args = parser.parse_args()

    from metapeft.experience import ExperienceStore, task_group, usable
    from metapeft.meta import CurveForecaster
    from metapeft.meta._forecast import curve_rows
    from metapeft.prior import PriorExperience

    records = [r for r in PriorExperience().records() if usable(r)]
    if args.store:
        records += [r for r in ExperienceStore(args.store).iter(status="finished") if usable(r)]
    groups = sorted({task_group(r) for r in records})
    rng = np.random.default_rng(0)
    rng.shuffle(groups)
    folds = [set(groups[i :: args.folds]) for i in range(args.folds)]
    hits, errors, naive, width = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    for held in folds:
        forecaster = CurveForecaster().fit([r for r in records if task_group(r) not in held])
        for r in records:
            if task_group(r) not in held:
                continue
            total = int(r.metrics.get("steps") or r.hyperparameters.get("max_steps"))
            for seen, final in curve_rows(r):
                key = f"{total} steps, at {seen[-1]['step'] / total:.2f}"
                f = forecaster.predict(r.method, int(r.profile.get("num_classes", 2)), seen, total)
                hits[key].append(f.low <= final <= f.high)
                errors[key].append(abs(f.mean - final))
                naive[key].append(abs(seen[-1]["accuracy"] - final))
                width[key].append(f.high - f.low)
    rows = {
        key: {
            "points": len(hits[key]),
            "coverage_80": round(float(np.mean(hits[key])), 3),
            "mae_points": round(100 * float(np.mean(errors[key])), 2),
            "naive_mae_points": round(100 * float(np.mean(naive[key])), 2),
            "mean_width_points": round(100 * float(np.mean(width[key])), 1),
        }
        for key in sorted(hits)
    }
    every = [h for v in hits.values() for h in v]
    summary = {
        "machine": f"{platform.machine()}",
        "runs": len(records),
        "tasks": len(groups),
        "folds": args.folds,
        "coverage_80": round(float(np.mean(every)), 3),
        "points": len(every),
        "by_point": rows,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
