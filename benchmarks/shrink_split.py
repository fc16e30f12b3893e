"""Would one factor for the method ordering and another for the settings' effect pick better than one factor?

The surrogate's accuracy is the methods' main effects plus a factor × the network's task-specific correction; the
factor is chosen by held-out regret (``meta._surrogate._selection_shrink``) and is 0 in the fit on the 1,437-run
prior, which also drops what the network says about a method's settings. This script splits the correction into its
part at the method's mean settings (the task-specific method ordering) and the rest (the settings' effect), refits the
surrogate's calibration folds on the shipped prior (4 folds by task, as ``fit`` does) and prints the held-out regret
(best run of each task instance less the run ranked first, points) over a grid of the two factors, overall and on the
instances whose runs differ in settings (one random setting per method).

    uv run python benchmarks/shrink_split.py      # ~8 min on 1 core
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold

from metapeft.experience import cell_key, task_group, usable
from metapeft.meta import Surrogate
from metapeft.meta._features import at_defaults, targets
from metapeft.prior import PriorExperience

GRID = np.round(np.linspace(0.0, 1.0, 6), 2)


def main() -> None:
    records = [r for r in PriorExperience().records() if usable(r)]
    groups = np.array([task_group(r) for r in records])
    rel, rel_method, level, truth, cells, varied = [], [], [], [], [], []
    for train, test in GroupKFold(n_splits=4).split(records, groups=groups):
        sub = Surrogate(calibrate=False, collapse_risk=False).fit([records[i] for i in train])
        held = [records[i] for i in test]
        x = sub._x_runs(held)
        raw = sub._raw(x)
        # the settings (every configuration feature but the method one-hot and the budget) at their mean
        start, enc = sub._config_columns().start, sub.encoder
        settings = [start + i for i in range(len(enc.methods), enc.dim) if i not in enc.budget_columns]
        at_mean = x.copy()
        at_mean[:, settings] = sub.x_mean[settings]
        rel.append(raw[..., 0].mean(0))
        rel_method.append(sub._raw(at_mean)[..., 0].mean(0))
        level.append((raw[..., 3] + x[:, -1] + sub._effect(x)).mean(0))
        truth.append(np.array([targets(r)[0] for r in held]))
        cells += [cell_key(r) for r in held]
        varied += [not at_defaults(r.method, r.hyperparameters) for r in held]
    rel, rel_method, level, observed = (np.concatenate(v) for v in (rel, rel_method, level, truth))
    cells, varied = np.array(cells), np.array(varied)
    index = [np.flatnonzero(cells == c) for c in dict.fromkeys(cells)]
    with_settings = [i for i in index if varied[i].any()]

    def regret(a: float, b: float, which) -> float:
        score = level + a * rel_method + b * (rel - rel_method)
        return 100 * float(np.mean([observed[i].max() - observed[i][np.argmax(score[i])] for i in which]))

    print(f"{len(index)} held-out instances, {len(with_settings)} with settings varied")
    for name, which in (("all instances", index), ("settings varied", with_settings)):
        print(f"\n{name}: rows = factor on the method ordering, columns = factor on the settings' effect")
        print("      " + " ".join(f"{b:6.1f}" for b in GRID))
        for a in GRID:
            print(f"{a:5.1f} " + " ".join(f"{regret(a, b, which):6.2f}" for b in GRID))


if __name__ == "__main__":
    main()
