"""Accuracy predictions after runs of the task: the intervals by training-set size, and runs at another step budget.

Five folds of the shipped prior by task: the surrogate is fitted on four; on the fifth's tasks

1. every instance has 1, 2 or 3 of its runs observed (3 random choices each) and the others predicted, once with the
   per-size factor on the conditioned variance (``Surrogate.cond_by_size``) and once without it (the same fit);
2. every task with 80- and 320-step runs at 1,024 examples has its 320-step runs predicted after 2 of its 80-step
   runs are observed, with the conditioning kept to runs at a like step budget (``like_budget``, what ``predict``
   does) and without that rule, and after 2 of its other 320-step runs.

Prints the accuracy error (points), the coverage of the 90% intervals and their median width (points).

    uv run python benchmarks/conditioned_intervals.py   # ~8 min on 1 core
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sklearn.model_selection import GroupKFold

from metapeft.experience import cell_key, fingerprint_of, task_group, usable
from metapeft.meta import Candidate, Surrogate
from metapeft.meta import _surrogate as surrogate_module
from metapeft.meta._evaluate import _few_shot, _size
from metapeft.prior import PriorExperience


def scored(model: Surrogate, runs: list, observed: list) -> tuple[float, float, float]:
    """(error, coverage, median width) of the predictions of ``runs`` after ``observed``."""
    p = model.predict(runs[0].profile, [Candidate(r.method, r.hyperparameters) for r in runs], observed=observed)
    acc = np.array([r.metrics["accuracy"] for r in runs])
    inside = (p.low[:, 0] <= acc) & (acc <= p.high[:, 0])
    return (
        100 * float(np.abs(p.mean[:, 0] - acc).mean()),
        float(inside.mean()),
        100 * float(np.median(p.high[:, 0] - p.low[:, 0])),
    )


def main() -> None:
    records = [r for r in PriorExperience().records() if usable(r)]
    groups = np.array([task_group(r) for r in records])
    by_size, by_budget = defaultdict(list), defaultdict(list)
    like_budget = surrogate_module.like_budget
    for train, test in GroupKFold(n_splits=5).split(records, groups=groups):
        model = Surrogate(seed=0).fit([records[i] for i in train])
        calibrated = model.cond_by_size.copy()
        cells = defaultdict(list)
        for i in test:
            cells[cell_key(records[i])].append(records[i])
        for runs in cells.values():
            for k in (1, 2, 3):
                if len(runs) <= k + 1:
                    continue
                for variant, factors in (("per size", calibrated), ("conjugate only", np.zeros(0, np.float32))):
                    model.cond_by_size = factors
                    for seed in range(3):
                        f = _few_shot(model, runs, k, seed=seed)
                        for size in (str(_size(runs[0])), "all"):
                            by_size[(k, size, variant)].append(f)
        model.cond_by_size = calibrated
        rng = np.random.default_rng(0)
        for runs in cells.values():
            long = [r for r in runs if r.hyperparameters["max_steps"] == 320 and _size(r) == 1024]
            short = [
                r
                for r in records
                if fingerprint_of(r) == fingerprint_of(runs[0]) and r.hyperparameters["max_steps"] == 80
            ]
            if len(long) < 4 or len(short) < 2:
                continue
            by_budget["zero-shot"].append(scored(model, long, []))
            for _ in range(3):
                seen = [short[i] for i in rng.permutation(len(short))[:2]]
                by_budget["2 runs at 80 steps, like budget only"].append(scored(model, long, seen))
                surrogate_module.like_budget = lambda record, seen: True  # noqa: ARG005 - every observed run counts
                try:
                    by_budget["2 runs at 80 steps, any budget"].append(scored(model, long, seen))
                finally:
                    surrogate_module.like_budget = like_budget
                order = rng.permutation(len(long))
                by_budget["2 other runs at 320 steps"].append(
                    scored(model, [long[i] for i in order[2:]], [long[i] for i in order[:2]])
                )
    print("observed runs | size | variant | instances | coverage | width | zero-shot coverage | zero-shot width")
    for (k, size, variant), rows in sorted(by_size.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", kv[0])):
        mean = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
        print(
            f"{k} | {size} | {variant} | {len(rows) // 3} | {100 * mean['coverage_conditioned']:.1f}% | "
            f"{mean['width_conditioned']:.1f} | {100 * mean['coverage_zero_shot']:.1f}% | "
            f"{mean['width_zero_shot']:.1f}"
        )
    print("\n320-step runs at 1,024 examples predicted after | cases | error | coverage | width")
    for label, rows in by_budget.items():
        error, coverage, width = np.array(rows).T
        print(f"{label} | {len(rows)} | {error.mean():.1f} | {100 * coverage.mean():.1f}% | {np.median(width):.1f}")


if __name__ == "__main__":
    main()
