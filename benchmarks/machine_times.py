"""Train-time predictions for a machine from its runs of other tasks (``Surrogate.predict(..., machine=...)``).

Five folds of the shipped prior by task: the surrogate is fitted on four. The fifth's runs are grouped by the machine
they ran on (its platform build and torch threads: the prior's records predate the processor name that
``machine_key`` reads); every held-out task's runs on a machine are predicted

- with the experience's times (no machine runs: what ``recommend`` shows a user whose machine has none), and
- with that machine's runs of the fold's other tasks (held out of the fit, like a user's own runs).

Only runs that had their cores to themselves count (``measured_time``). The prior's machines are alike (x86-64 cloud
CPUs, one thread per run), so the same is repeated with every run of the fold timed 20x faster — a stand-in for a fast
GPU that no machine here has (a real one speeds methods up unequally; this one does not, so it shows the update's
reach, not a GPU's). Last, as ``recommend`` runs, with the machine's runs in the experience the surrogate is fitted
on: half of each fold's tasks, timed 20x faster, join the fit, and the other half's are predicted from them.

Prints, per machine, the median factor between predicted and measured train time, the coverage of the 90% intervals
and their median width (high / low).

    uv run python benchmarks/machine_times.py   # ~10 min on 1 core
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
from sklearn.model_selection import GroupKFold

from metapeft.experience import measured_time, task_group, usable
from metapeft.meta import Candidate, Surrogate
from metapeft.prior import PriorExperience


def machine(record) -> str:
    env = record.environment
    return f"{env.get('platform', '?').split('-fc-')[-1].split('-')[0]}, {env.get('torch_threads')} thread(s)"


def scored(model: Surrogate, runs: list, others: list | None) -> list[tuple[float, bool, float]]:
    """(|log predicted / measured time|, inside the 90% interval, high / low) for each of ``runs``."""
    p = model.predict(
        runs[0].profile, [Candidate(r.method, r.hyperparameters) for r in runs], machine=others or None, draws=10
    )
    measured = np.array([measured_time(r) for r in runs])
    inside = (p.low[:, 1] <= measured) & (measured <= p.high[:, 1])
    return list(zip(np.abs(np.log(p.mean[:, 1] / measured)), inside, p.high[:, 1] / p.low[:, 1]))


def main() -> None:
    # only runs that had their cores to themselves (``measured_time``): the others' times are not the machine's
    records = [r for r in PriorExperience().records() if usable(r) and measured_time(r)]
    groups = np.array([task_group(r) for r in records])
    rows = defaultdict(list)
    for train, test in GroupKFold(n_splits=5).split(records, groups=groups):
        model = Surrogate(seed=0).fit([records[i] for i in train])
        held = [records[i] for i in test]
        for speed, label in ((1.0, ""), (20.0, " timed 20x faster")):
            timed = [
                dataclasses.replace(r, metrics={**r.metrics, "train_time_s": r.metrics["train_time_s"] / speed})
                for r in held
            ]
            by = defaultdict(lambda: defaultdict(list))
            for r in timed:
                by[machine(r)][task_group(r)].append(r)
            for where, tasks in by.items():
                for task, runs in tasks.items():
                    others = [r for t, rs in tasks.items() if t != task for r in rs]
                    for cell in {r.task_name for r in runs}:
                        cell_runs = [r for r in runs if r.task_name == cell]
                        rows[(where + label, "experience's times")] += scored(model, cell_runs, None)
                        if others:
                            rows[(where + label, "this machine's other tasks")] += scored(model, cell_runs, others)
        # as recommend runs: your runs are in the experience it fits on. Half the fold's tasks, timed 20x faster, go
        # into the fit and are the machine's runs; the other half's runs (20x faster too) are predicted
        names = sorted({task_group(r) for r in held})
        mine = {t for i, t in enumerate(names) if i % 2 == 0}
        fast = [  # a user's runs, not the shipped prior's
            dataclasses.replace(
                r, source="metapeft", metrics={**r.metrics, "train_time_s": r.metrics["train_time_s"] / 20}
            )
            for r in held
        ]
        seen = [r for r in fast if task_group(r) in mine]
        model = Surrogate(seed=0).fit([records[i] for i in train] + seen)
        for cell in {r.task_name for r in fast if task_group(r) not in mine}:
            cell_runs = [r for r in fast if r.task_name == cell]
            rows[("all, timed 20x faster, its runs in the fit", "experience's times")] += scored(
                model, cell_runs, None
            )
            rows[("all, timed 20x faster, its runs in the fit", "this machine's other tasks")] += scored(
                model, cell_runs, seen
            )
    print("machine | prediction | runs | median factor off | coverage | median width (high/low)")
    for (where, variant), scores in sorted(rows.items()):
        error, inside, width = np.array(scores).T
        print(
            f"{where} | {variant} | {len(scores)} | {np.exp(np.median(error)):.2f}x | {100 * inside.mean():.1f}% | "
            f"{np.median(width):.1f}x"
        )


if __name__ == "__main__":
    main()
