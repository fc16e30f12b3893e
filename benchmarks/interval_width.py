"""How narrow can a zero-shot accuracy interval be? The out-of-task prediction errors of the shipped prior, split into
the task instance's level and the spread within it.

A 90% interval for one run on a new task must cover two errors: how far off the prediction of the task instance's
level is (the mean error over its runs), and how far a run lies from its instance's level (settings, seeds, test
noise). The second is a floor no model of the task's level removes: even a selector that knew each instance's mean
accuracy exactly would need intervals that wide. Beside the surrogate's errors (the out-of-task predictions shipped
with the prior, ``prior.expected_accuracies``), a linear model of the instance's mean accuracy on three landmarks of
the task (the profile's probe accuracy and majority share, log training-set size), fitted leave-one-task-out, says
how much of the level error simple features could remove.

    uv run python benchmarks/interval_width.py [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from metapeft.experience import cell_key, task_group, usable
from metapeft.meta._risk import failures
from metapeft.prior import PriorExperience, expected_accuracies


def width(x: np.ndarray) -> float:
    """The central 90% range of ``x``, in points."""
    low, high = np.percentile(x, [5, 95])
    return round(100 * float(high - low), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    expected = expected_accuracies()
    records = [r for r in PriorExperience().records() if usable(r) and r.id in expected]
    y = np.array([r.metrics["accuracy"] for r in records])
    error = y - np.array([expected[r.id] for r in records])
    failed = failures(records)
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by[cell_key(r)].append(i)
    level = np.zeros_like(error)  # each run's instance-level error
    for rows in by.values():
        level[rows] = error[rows].mean()
    within = error - level

    # the landmark model: instance mean accuracy ~ probe accuracy + majority share + log2 size, leave-one-task-out
    cells = list(by.values())
    first = [records[rows[0]] for rows in cells]
    x = np.array(
        [
            [
                r.profile.get("probe_accuracy", 0.5),
                r.profile.get("majority_accuracy", 0.5),
                np.log2(r.profile["dataset_size"]),
                1.0,
            ]
            for r in first
        ]
    )
    mean = np.array([y[rows].mean() for rows in cells])
    groups = np.array([task_group(r) for r in first])
    landmark = np.zeros_like(mean)
    for g in set(groups):
        held = groups == g
        landmark[held] = x[held] @ np.linalg.lstsq(x[~held], mean[~held], rcond=None)[0]
    landmark_error = np.zeros_like(error)
    for rows, e in zip(cells, mean - landmark):
        landmark_error[rows] = e

    sizes = np.array([r.profile["dataset_size"] for r in records])
    out = {"runs": len(records), "instances": len(cells), "by_size": {}}
    for name, keep in [("all", np.ones(len(records), bool))] + [(str(s), sizes == s) for s in sorted(set(sizes))]:
        figures = {
            "runs": int(keep.sum()),
            "error": width(error[keep]),
            "level": width(level[keep]),
            "within_instance": width(within[keep]),
            "within_instance_not_failed": width(within[keep & ~failed]),
            "landmark_level": width(landmark_error[keep]),
            "landmark_level_mae": round(100 * float(np.abs(landmark_error[keep]).mean()), 1),
            "surrogate_level_mae": round(100 * float(np.abs(level[keep]).mean()), 1),
        }
        if name == "all":
            out.update(figures)
        else:
            out["by_size"][name] = figures
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['runs']} runs, {out['instances']} instances: central 90% ranges of the errors, in points")
    print(
        "size | runs | error | instance level | within instance (not failed) | landmark level (MAE) | "
        "surrogate level MAE"
    )
    for name, f in [("all", out)] + list(out["by_size"].items()):
        print(
            f"{name} | {f['runs']} | {f['error']} | {f['level']} | {f['within_instance']} "
            f"({f['within_instance_not_failed']})"
            f" | {f['landmark_level']} ({f['landmark_level_mae']}) | {f['surrogate_level_mae']}"
        )


if __name__ == "__main__":
    main()
