"""Accuracy intervals after runs of the task, by training-set size: the conjugate update's variances alone against
the same calibrated per size (``Surrogate.cond_by_size``).

Five folds of the shipped prior by task: the surrogate is fitted on four, and on every instance of the fifth's tasks
1, 2 or 3 of its runs are observed (3 random choices each) and the others predicted, once with the per-size factor
and once without it (the same fit). Prints, per observed-run count and size, the instances, the coverage of the 90%
intervals and their median width (points), conditioned and zero-shot.

    uv run python benchmarks/conditioned_intervals.py   # ~7 min on 1 core
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sklearn.model_selection import GroupKFold

from metapeft.experience import cell_key, task_group, usable
from metapeft.meta import Surrogate
from metapeft.meta._evaluate import _few_shot, _size
from metapeft.prior import PriorExperience


def main() -> None:
    records = [r for r in PriorExperience().records() if usable(r)]
    groups = np.array([task_group(r) for r in records])
    out = defaultdict(list)
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
                            out[(k, size, variant)].append(f)
    print("observed runs | size | variant | instances | coverage | width | zero-shot coverage | zero-shot width")
    for (k, size, variant), rows in sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all", kv[0])):
        mean = {key: np.mean([r[key] for r in rows]) for key in rows[0]}
        print(
            f"{k} | {size} | {variant} | {len(rows) // 3} | {100 * mean['coverage_conditioned']:.1f}% | "
            f"{mean['width_conditioned']:.1f} | {100 * mean['coverage_zero_shot']:.1f}% | "
            f"{mean['width_zero_shot']:.1f}"
        )


if __name__ == "__main__":
    main()
