"""Collapse risk on held-out tasks (issue 22, item 5): how well P(failure) separates runs that failed from runs \
that did not.

A run failed when its accuracy is within 2 points of chance or more than 10 points below the best run of its task
instance (``metapeft.meta._risk``). Five folds by task over the shipped prior (plus, with ``--store``, another
store's runs): the model is fitted on four folds' tasks and scores every run of the fifth. Which tasks share a fold
moves the AUC by several points (one split of the prior gives 0.76, another 0.70), so the split is drawn ``--repeats``
times (seeded permutations of the tasks) and the AUC and Brier score are reported as mean ± sd and range over the
splits; the per-size AUCs and the reliability table (predicted vs observed failure rate by bins) pool every split's
held-out predictions.

The **replicate ceiling** asks how reproducible the label itself is: over configurations run on two training seeds of
one task and budget, the AUC with which one seed's shortfall (its run's distance to the best run of its instance)
separates the other seed's failures — what a model would score that knew the configuration's outcome on that very
task but for the seed. The model's pooled held-out AUC on the same runs stands beside it.

    uv run python benchmarks/collapse_risk.py [--store sqlite:///$PWD/.bench/curves.db]
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="also read this store's finished runs")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="random task splits into folds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from metapeft.experience import ExperienceStore, task_group, usable
    from metapeft.meta._risk import CollapseRisk, failures
    from metapeft.prior import PriorExperience

    records = PriorExperience().records() + (
        list(ExperienceStore(args.store).iter(status="finished")) if args.store else []
    )
    records = [r for r in {r.id: r for r in records}.values() if usable(r)]
    y = failures(records)
    groups = np.array([task_group(r) for r in records])
    names = sorted(set(groups))
    aucs, briers, pooled = [], [], []
    for seed in range(args.repeats):
        order = np.random.default_rng(seed).permutation(len(names))
        fold_of = {names[j]: i % args.folds for i, j in enumerate(order)}
        folds = np.array([fold_of[g] for g in groups])
        p = np.zeros(len(records))
        for k in range(args.folds):
            model = CollapseRisk().fit([records[i] for i in np.where(folds != k)[0]])
            for i in np.where(folds == k)[0]:
                p[i] = model.predict(records[i].profile, [(records[i].method, records[i].hyperparameters)])[0]
        aucs.append(roc_auc_score(y, p))
        briers.append(brier_score_loss(y, p))
        pooled.append(p)
    p, y_all = np.concatenate(pooled), np.tile(y, args.repeats)
    sizes = np.tile([int(r.profile["dataset_size"]) for r in records], args.repeats)
    bins = np.array([0, 0.05, 0.1, 0.2, 0.4, 1.0001])
    table = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        inside = (p >= lo) & (p < hi)
        if inside.any():
            table.append(
                {
                    "bin": f"{lo:.2f}–{min(hi, 1):.2f}",
                    "runs": round(int(inside.sum()) / args.repeats),
                    "predicted": round(float(p[inside].mean()), 3),
                    "observed": round(float(y_all[inside].mean()), 3),
                }
            )
    by_size = {}
    for size in sorted(set(sizes.tolist())):
        mask = sizes == size
        if y_all[mask].any() and not y_all[mask].all():
            by_size[size] = {
                "runs": int(mask.sum()) // args.repeats,
                "failures": int(y_all[mask].sum()) // args.repeats,
                "auc": round(float(roc_auc_score(y_all[mask], p[mask])), 3),
            }
    by_learning_rate = _by_learning_rate(records, y, p, args.repeats)
    replicates = _replicate_ceiling(records, y, p, args.repeats)
    result = {
        "runs": len(records),
        "tasks": len(set(groups)),
        "failures": int(y.sum()),
        "splits": args.repeats,
        "auc": round(float(np.mean(aucs)), 3),
        "auc_sd": round(float(np.std(aucs)), 3),
        "auc_range": [round(float(min(aucs)), 3), round(float(max(aucs)), 3)],
        "brier": round(float(np.mean(briers)), 4),
        "brier_base_rate": round(float(brier_score_loss(y, np.full(len(y), y.mean()))), 4),
        "by_size": by_size,
        "reliability": table,
        "by_learning_rate": by_learning_rate,
        "replicate_ceiling": replicates,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['runs']} runs on {result['tasks']} tasks, {result['failures']} failed; held-out-task AUC "
        f"{result['auc']} ± {result['auc_sd']} "
        f"(range {result['auc_range'][0]}–{result['auc_range'][1]} over {result['splits']} splits), Brier "
        f"{result['brier']} (base rate alone {result['brier_base_rate']})"
    )
    for size, s in by_size.items():
        print(f"  {size} examples: {s['runs']} runs, {s['failures']} failed, AUC {s['auc']}")
    if replicates:
        print(
            f"replicate ceiling: {replicates['pairs']} configurations on two seeds ({replicates['tasks']} tasks, "
            f"{replicates['failures']} failed runs of {2 * replicates['pairs']}): the other seed's shortfall "
            f"separates failures at AUC {replicates['auc_other_seed']}, the model (held out) at "
            f"{replicates['auc_model']}"
        )
    print("| predicted risk | runs | mean predicted | observed failure rate |\n|---|---:|---:|---:|")
    for row in table:
        print(f"| {row['bin']} | {row['runs']} | {row['predicted']:.3f} | {row['observed']:.3f} |")
    print("| learning rate against its method's default | runs | mean predicted | observed failure rate |")
    print("|---|---:|---:|---:|")
    for name, row in by_learning_rate.items():
        print(f"| {name} | {row['runs']} | {row['predicted']:.3f} | {row['observed']:.3f} |")


def _by_learning_rate(records, y: np.ndarray, pooled: np.ndarray, repeats: int) -> dict:
    """Held-out predicted and observed failure rates by how far a run's learning rate lies from its method's
    default (a factor, either way): is the risk calibrated for the unusual settings ``metapeft check`` is asked
    about, not only on the whole (where most runs are at the defaults)?"""
    from metapeft.methods import get_method

    default = {m: get_method(m).defaults().learning_rate for m in {r.method for r in records}}
    factor = np.array(
        [
            np.log2(r.hyperparameters["learning_rate"] / default[r.method])
            if default[r.method] and r.hyperparameters.get("learning_rate")
            else 0.0
            for r in records
        ]
    )
    model = pooled.reshape(repeats, len(records)).mean(0)
    bands = {
        "4× or more below": factor <= -2,
        "2–4× below": (factor > -2) & (factor <= -1),
        "within 2×, not the default": (np.abs(factor) < 1) & (np.abs(factor) > 0.01),
        "the default": np.abs(factor) <= 0.01,
        "2–4× above": (factor >= 1) & (factor < 2),
        "4× or more above": factor >= 2,
    }
    return {
        name: {
            "runs": int(band.sum()),
            "predicted": round(float(model[band].mean()), 3),
            "observed": round(float(y[band].mean()), 3),
        }
        for name, band in bands.items()
        if band.any()
    }


def _replicate_ceiling(records, y: np.ndarray, pooled: np.ndarray, repeats: int) -> dict | None:
    """The label's reproducibility across training seeds (module docstring), and the model's AUC on the same runs."""
    from collections import defaultdict

    from sklearn.metrics import roc_auc_score

    from metapeft.experience import budget_key, cell_key
    from metapeft.methods import BUDGET_FIELDS

    best: dict[str, float] = defaultdict(float)
    for r in records:
        best[cell_key(r)] = max(best[cell_key(r)], float(r.metrics["accuracy"]))
    by_config: dict[tuple, dict[int, int]] = defaultdict(dict)
    for i, r in enumerate(records):
        settings = {k: v for k, v in r.hyperparameters.items() if k not in BUDGET_FIELDS}
        config = (r.task_name, budget_key(r), r.method, json.dumps(settings, sort_keys=True, default=str))
        by_config[config][r.seed or 0] = i  # the training seed (benches that split seeds record it as the seed)
    pairs = [sorted(seeds.values())[:2] for seeds in by_config.values() if len(seeds) >= 2]
    if not pairs:
        return None
    first, second = (np.array([p[k] for p in pairs]) for k in (0, 1))
    labels = np.r_[y[second], y[first]]
    if labels.all() or not labels.any():
        return None
    shortfall = np.array([best[cell_key(r)] - float(r.metrics["accuracy"]) for r in records])
    model = pooled.reshape(repeats, len(records)).mean(0)
    return {
        "pairs": len(pairs),
        "tasks": len({records[i].task_name for i in first}),
        "failures": int(labels.sum()),
        "auc_other_seed": round(float(roc_auc_score(labels, np.r_[shortfall[first], shortfall[second]])), 3),
        "auc_model": round(float(roc_auc_score(labels, np.r_[model[second], model[first]])), 3),
    }


if __name__ == "__main__":
    main()
