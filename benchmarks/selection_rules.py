"""Which rule turns the surrogate's predictions into a choice? Leave-one-task-out, scored like ``metapeft evaluate``.

Fitting the surrogate 40 times is the slow part (~25 min on one core), so its predictions for every held-out
instance (means, intervals, joint accuracy draws, collapse risks, each method's size-weighted gap on the training
tasks) are written once to ``--cache`` (npz + json, no pickle) and the rules are then scored from the cache in
seconds, with every method or ``--peft-only``, and the calibration of the draws' P(best) is shown per method.
A rule maps a :class:`Prediction` and the candidates' methods to one chosen candidate index; regret and top-1 are
those of ``metapeft evaluate`` (best run minus chosen run).

    uv run python benchmarks/selection_rules.py [--store sqlite:///.bench/prior.db] [--cache .bench/loto.npz] \\
        [--peft-only]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from metapeft.experience import ExperienceStore, cell_key, task_group, usable
from metapeft.meta import Surrogate
from metapeft.meta._embedding import cells_of, method_gaps
from metapeft.meta._evaluate import GlobalBest
from metapeft.meta._features import at_defaults
from metapeft.meta._recommend import cautious_choice, rank_methods
from metapeft.meta._surrogate import Candidate, Prediction
from metapeft.prior import experiences


def predict_all(
    records, min_methods: int = 5, held_out: set[str] | None = None, steps: int | None = None
) -> list[dict]:
    groups = sorted({task_group(r) for r in records} & (held_out or {task_group(r) for r in records}))
    out = []
    for n, held in enumerate(groups):
        t0 = time.time()
        train = [r for r in records if task_group(r) != held]
        model = Surrogate().fit(train)
        gap = GlobalBest().fit(train).gap
        past = cells_of(train)
        cells = defaultdict(list)
        for r in records:
            if task_group(r) == held and (steps is None or r.hyperparameters.get("max_steps") == steps):
                cells[cell_key(r)].append(r)
        for runs in cells.values():
            if len({r.method for r in runs}) < min_methods:
                continue
            cands = [Candidate(r.method, r.hyperparameters) for r in runs]
            p = model.predict(runs[0].profile, cands)
            size_gap = method_gaps(past, runs[0].profile.get("dataset_size"))
            other_gap = method_gaps(past, runs[0].profile.get("dataset_size"), runs="others")
            out.append(
                {
                    "task": held,
                    "cell": runs[0].task_name,
                    "size": runs[0].profile.get("dataset_size"),
                    "methods": [r.method for r in runs],
                    "defaults": [at_defaults(r.method, r.hyperparameters) for r in runs],
                    "accuracy": [r.metrics["accuracy"] for r in runs],
                    "global_gap": [gap.get(r.method, 1.0) for r in runs],
                    "size_gap": [size_gap.get(r.method, 1.0) for r in runs],
                    "other_gap": [other_gap.get(r.method, 1.0) for r in runs],
                    "chance": p.chance,
                    "fail": p.fail,
                    "mean": p.mean,
                    "low": p.low,
                    "high": p.high,
                    "samples": p.joint_draws(),
                    "sd": p.sd(),
                }
            )
        print(f"[{n + 1}/{len(groups)}] {held} {time.time() - t0:.0f}s", flush=True)
    return out


ARRAYS = ("mean", "low", "high", "samples", "sd", "fail")


def save(cells: list[dict], path: Path) -> None:
    arrays = {f"{i}_{k}": c[k] for i, c in enumerate(cells) for k in ARRAYS}
    np.savez_compressed(path, **arrays)
    meta = [
        {
            k: c[k]
            for k in (
                *("task", "cell", "size", "methods", "defaults", "accuracy"),
                *("global_gap", "size_gap", "other_gap", "chance"),
            )
            if k in c
        }
        for c in cells
    ]
    path.with_suffix(".json").write_text(json.dumps(meta))


def load(path: Path) -> list[dict]:
    meta = json.loads(path.with_suffix(".json").read_text())
    with np.load(path) as z:
        for i, c in enumerate(meta):
            c.update({k: z[f"{i}_{k}"] for k in ARRAYS})
            c["accuracy"] = np.array(c["accuracy"])
    return meta


def _pred(c: dict, weigh_risk: bool = False) -> Prediction:
    return Prediction(
        c["mean"],
        c["low"],
        c["high"],
        c["samples"],
        c["sd"],
        fail=c["fail"] if weigh_risk else None,
        chance=c["chance"],
    )


def restrict(cells: list[dict], allowed: set[str]) -> list[dict]:
    """The cells with only the candidates of ``allowed`` methods (instances left with fewer than 5 methods go, as in
    ``metapeft evaluate``)."""
    out = []
    for c in cells:
        keep = [i for i, m in enumerate(c["methods"]) if m in allowed]
        if len({c["methods"][i] for i in keep}) < min(5, len(allowed)):
            continue
        cut = {
            k: (c[k][:, keep] if k == "samples" else np.asarray(c[k])[keep])
            for k in (*ARRAYS, "accuracy", "global_gap", "size_gap", "other_gap", "defaults")
            if k in c
        }
        out.append({**c, **cut, "methods": [c["methods"][i] for i in keep]})
    return out


def shipped_rule(c: dict) -> int:
    """``recommend``'s rule: collapse-weighed cautious choice and ranking, the size-aware incumbent among the
    candidates' methods unless beaten in 70% of the draws, judged on every past run where every chosen setting is
    its method's defaults and on the runs at other settings elsewhere (``Incumbents``; a cache without these gaps
    uses every run)."""
    p = _pred(c, weigh_risk=True)
    chosen = cautious_choice(p, c["methods"])
    key = "size_gap"
    if "other_gap" in c and not all(c["defaults"][i] for i in chosen.values()):
        key = "other_gap" if np.sum(np.asarray(c["other_gap"]) < 1.0) >= 2 else key
    gap = dict(zip(c["methods"], c[key]))
    return chosen[rank_methods(p, chosen, min(gap, key=gap.get))[0]]


def by_method(score):
    """Per method its cautious candidate (as ``recommend``), methods ranked by ``score(c, i)``."""

    def rule(c: dict) -> int:
        return max(cautious_choice(_pred(c), c["methods"]).values(), key=lambda i: score(c, i))

    return rule


def incumbent_rule(sure: float):
    """``recommend``'s rule (``rank_methods``): the method with the smallest mean gap to the best over the training
    tasks stays first unless the leader by mean beats it in at least ``sure`` of the joint draws."""

    def rule(c: dict) -> int:
        p = _pred(c)
        chosen = cautious_choice(p, c["methods"])
        gap = dict(zip(c["methods"], c["global_gap"]))
        return chosen[rank_methods(p, chosen, min(gap, key=gap.get), sure)[0]]

    return rule


RULES = {
    "by mean (until 2026-11-22)": by_method(lambda c, i: c["mean"][i, 0]),
    "mean - 0.5 sd": by_method(lambda c, i: c["mean"][i, 0] - 0.5 * c["sd"][i]),
    "mean - 1 sd": by_method(lambda c, i: c["mean"][i, 0] - 1.0 * c["sd"][i]),
    "10% quantile of draws": by_method(lambda c, i: np.quantile(c["samples"][:, i], 0.1)),
    "mean - 0.5 global gap": by_method(lambda c, i: c["mean"][i, 0] - 0.5 * c["global_gap"][i]),
    "mean - 1 global gap": by_method(lambda c, i: c["mean"][i, 0] - 1.0 * c["global_gap"][i]),
    "global best": by_method(lambda c, i: -c["global_gap"][i]),
    **{f"incumbent unless beaten {round(100 * t)}%": incumbent_rule(t) for t in (0.55, 0.6, 0.7, 0.8)},
    "shipped (collapse risk, size-aware incumbent)": shipped_rule,
}


def score(cells: list[dict], rule) -> dict:
    per_task = defaultdict(list)
    top1 = []
    worst = 0.0
    for c in cells:
        acc, methods = c["accuracy"], c["methods"]
        i = rule(c)
        best = acc.max()
        regret = 100 * (best - acc[i])
        worst = max(worst, regret)
        per_task[c["task"]].append(regret)
        top1.append(max(a for a, m in zip(acc, methods) if m == methods[i]) >= best - 1e-9)
    tasks = {t: float(np.mean(v)) for t, v in per_task.items()}
    return {
        "mean_regret": float(np.mean(list(tasks.values()))),
        "worst_cell": worst,
        "top1": float(np.mean(top1)),
        "tasks": tasks,
    }


def calibration(cells: list[dict]) -> None:
    """Per method, the mean P(best) of the cached draws (uncalibrated: one candidate per method, as ``recommend``)
    against how often it was a best method (a tie among k counts 1/k), and the ECE of the ranked-first method."""
    from metapeft.meta._evaluate import expected_calibration_error

    given, share, first = defaultdict(list), defaultdict(list), []
    for c in cells:
        p, acc, methods = _pred(c), c["accuracy"], c["methods"]
        chosen = cautious_choice(p, methods)
        gap = dict(zip(methods, c["global_gap"]))
        ranking = rank_methods(p, chosen, min(gap, key=gap.get))
        probs = p.take([chosen[m] for m in ranking]).best_probability()
        best = {m: max(a for a, n in zip(acc, methods) if n == m) for m in ranking}
        top = [m for m in ranking if best[m] >= max(best.values()) - 1e-9]
        for m, q in zip(ranking, probs):
            given[m].append(q)
            share[m].append((m in top) / len(top))
        first.append((probs[0], share[ranking[0]][-1], float(ranking[0] in top)))
    print("method              P(best) given   best (ties split)")
    for m in sorted(given):
        print(f"{m:20s} {np.mean(given[m]):14.3f} {np.mean(share[m]):18.3f}")
    conf, split, wins = zip(*first)
    print(
        f"ranked first: ECE {expected_calibration_error(conf, split):.3f} (ties split), "
        f"{expected_calibration_error(conf, wins):.3f} (ties as wins)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="also use the runs of this store (default: the shipped prior only)")
    ap.add_argument("--cache", default=".bench/loto.npz")
    ap.add_argument("--refit", action="store_true", help="fit again even when the cache exists")
    ap.add_argument("--peft-only", action="store_true", help="choose among the PEFT methods' runs only")
    ap.add_argument(
        "--held-out", default=None, help="comma-separated tasks to hold out and score (default: every task)"
    )
    ap.add_argument("--steps", type=int, default=None, help="score only task instances trained for this many steps")
    args = ap.parse_args()
    path = Path(args.cache)
    if args.refit or not path.exists():
        store = ExperienceStore(args.store) if args.store else None
        records = [r for r in experiences(store, include_own=store is not None) if usable(r)]
        path.parent.mkdir(parents=True, exist_ok=True)
        held = set(args.held_out.split(",")) if args.held_out else None
        save(predict_all(records, held_out=held, steps=args.steps), path)
    cells = load(path)
    if args.peft_only:
        from metapeft.methods import list_methods

        cells = restrict(cells, {m.name for m in list_methods() if m.kind == "peft"})
    sizes = sorted({c["size"] for c in cells})
    print(f"{len(cells)} task instances, {len({c['task'] for c in cells})} tasks")
    base = score(cells, RULES["by mean (until 2026-11-22)"])["tasks"]
    print(
        f"{'rule':28s} {'regret':>7s} "
        + " ".join(f"{'@' + str(s):>7s}" for s in sizes)
        + f" {'worst':>6s} {'top-1':>6s} {'p vs by mean':>12s}"
    )
    from scipy.stats import wilcoxon

    for name, rule in RULES.items():
        s = score(cells, rule)
        at = [score([c for c in cells if c["size"] == z], rule)["mean_regret"] for z in sizes]
        a = np.array([s["tasks"][t] for t in sorted(base)])
        b = np.array([base[t] for t in sorted(base)])
        p = wilcoxon(a, b).pvalue if np.any(a != b) else 1.0
        print(
            f"{name:28s} {s['mean_regret']:7.2f} "
            + " ".join(f"{x:7.2f}" for x in at)
            + f" {s['worst_cell']:6.1f} {100 * s['top1']:5.0f}% {p:12.3f}"
        )
    calibration(cells)


if __name__ == "__main__":
    main()
