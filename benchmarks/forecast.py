"""The learning-curve forecaster on held-out tasks (issue 21): do its 80% intervals cover 75–85% of final accuracies?

Five folds by task over the shipped prior (plus, with ``--store``, the curves bench's runs): the forecaster is fitted
on four fifths of the tasks and forecasts every curve point of the other fifth's runs. Reported per point of the
budget: the intervals' coverage of the final accuracy (measured on 1,000 held-out examples), the forecast's mean
absolute error, and that of the naive forecast "the final accuracy is the last one seen".

With ``--surrogate`` the forecaster also reads the surrogate's prediction of each run's final accuracy, out of task:
a meta-learner is fitted per fold on the other folds' tasks and predicts the fold's runs (the same folds, so a
held-out run's input never saw its task; five meta-learner fits, ~6 min on 1 core), and the figures are reported
with and without it on the same forecasts.

    uv run python benchmarks/forecast.py
    uv run python benchmarks/forecast.py --store sqlite:///$PWD/.bench/curves.db [--surrogate]
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
    parser.add_argument("--surrogate", action="store_true", help="also with the surrogate's out-of-task prediction")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "forecast.json"))
    args = parser.parse_args()

    from metapeft.experience import ExperienceStore, usable
    from metapeft.meta import out_of_task_predictions, task_folds
    from metapeft.prior import experiences

    store = ExperienceStore(args.store) if args.store else None  # a run both shipped and in the store counts once
    records = [r for r in experiences(store, include_prior=True, include_own=store is not None) if usable(r)]
    folds = task_folds(records, args.folds)  # the folds out_of_task_predictions makes by default
    expected = {}
    if args.surrogate:  # kept between runs: five meta-learner fits
        cache = Path(__file__).resolve().parents[1] / ".bench" / f"forecast-expected-{args.folds}.json"
        expected = json.loads(cache.read_text()) if cache.exists() else {}
        if set(expected) != {r.id for r in records}:
            expected = out_of_task_predictions(records, folds, progress=print)
            cache.parent.mkdir(exist_ok=True)
            cache.write_text(json.dumps(expected))
    summary = {
        "machine": f"{platform.machine()}",
        "runs": len(records),
        "tasks": len(set().union(*folds)),
        "folds": args.folds,
        **scores(records, folds, {}),
    }
    if args.surrogate:
        summary["with_surrogate"] = scores(records, folds, expected)
        summary["surrogate_mae_points"] = round(
            100 * float(np.mean([abs(expected[r.id] - r.metrics["accuracy"]) for r in records])), 2
        )
    text = json.dumps(summary, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


def scores(records: list, folds: list[set], expected: dict[str, float]) -> dict:
    """Coverage and errors of the forecasts of every held-out curve point, fold by fold."""
    from metapeft.experience import task_group
    from metapeft.meta import CurveForecaster
    from metapeft.meta._forecast import curve_rows

    hits, errors, naive, width = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    for held in folds:
        forecaster = CurveForecaster().fit([r for r in records if task_group(r) not in held], expected)
        for r in records:
            if task_group(r) not in held:
                continue
            total = int(r.metrics.get("steps") or r.hyperparameters.get("max_steps"))
            for seen, final in curve_rows(r):
                key = f"{total} steps, at {seen[-1]['step'] / total:.2f}"
                num_classes = int(r.profile.get("num_classes", 2))
                f = forecaster.predict(r.method, num_classes, seen, total, expected.get(r.id))
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
    return {"coverage_80": round(float(np.mean(every)), 3), "points": len(every), "by_point": rows}


if __name__ == "__main__":
    main()
