"""How much any selector could gain over LoRA at its defaults (issue 22's first target), by training-set size and
step budget.

Per task instance (one task's training sample under one step budget, PEFT methods only, the prior and optionally
another store):

- **hindsight**: the best run's accuracy minus LoRA-at-defaults' on the same seed: what a selector that knew every
  run's accuracy would gain. It is inflated by the winner's curse: the best of ten runs on one test set is partly
  its noise.
- **cross-fitted** (instances trained on two training seeds): the configuration best on one seed, scored on the
  other, minus LoRA-at-defaults' accuracy there (both directions averaged): the ceiling without the winner's curse.
  Beside it, the hindsight figure on the same instances (averaged over both seeds), so the two are comparable, and
  the plain regret of copying the other seed's winner (best on this seed minus the copied configuration's accuracy).
  Configurations tied on one seed are each taken as that seed's winner with equal chance.

These are the figures ``metapeft evaluate`` reports as its ceiling row and as ``other_seed_winner_gain_over_lora_
defaults``, computed from the runs alone (no selector is fitted, so this takes seconds).

    uv run python benchmarks/gain_ceiling.py [--store sqlite:///$PWD/.bench/curves.db] [--json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np


def _summary(values: list[float], rng: np.random.Generator, draws: int = 2000) -> dict:
    v = np.array(values)
    boot = rng.choice(v, size=(draws, len(v))).mean(1) if len(v) else np.array([np.nan])
    return {
        "instances": len(v),
        "mean": round(float(v.mean()), 2) if len(v) else None,
        "interval": [round(float(np.quantile(boot, q)), 2) for q in (0.05, 0.95)] if len(v) else None,
        "median": round(float(np.median(v)), 2) if len(v) else None,
        "max": round(float(v.max()), 2) if len(v) else None,
        "at_least_1.5": int((v >= 1.5).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="also read this store's finished runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from metapeft.experience import ExperienceStore, usable
    from metapeft.meta import Constraint
    from metapeft.meta._evaluate import _config_key
    from metapeft.meta._features import at_defaults
    from metapeft.prior import PriorExperience

    records = PriorExperience().records() + (
        list(ExperienceStore(args.store).iter(status="finished")) if args.store else []
    )
    peft = Constraint(peft_only=True)
    records = [r for r in {r.id: r for r in records}.values() if usable(r) and peft.allows(r)]

    # instance (task, size, steps) -> configuration -> seed -> accuracy (points). The seed draws the training sample
    # in the prior's runs and only the initialisation and order in benches that split them (as `evaluate` pairs them).
    runs: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in sorted(records, key=lambda r: r.created_at):
        hp = r.hyperparameters
        size = int(r.profile.get("dataset_size") or 0)
        key = (r.task_name.split("@")[0], size, int(hp.get("max_steps") or 0))
        config = "lora-defaults" if r.method == "lora" and at_defaults(r.method, hp) else _config_key(r)
        seed = int(r.seed or 0)
        runs[key][config].setdefault(seed, 100 * r.metrics["accuracy"])

    hindsight: dict[tuple, list[float]] = defaultdict(list)
    crossed: dict[tuple, list[float]] = defaultdict(list)
    paired_hindsight: dict[tuple, list[float]] = defaultdict(list)
    copy_regret: dict[tuple, list[float]] = defaultdict(list)  # plain regret of the other seed's winner
    per_task: dict[tuple, list[tuple[str, float, float]]] = defaultdict(list)
    for (task, size, steps), configs in sorted(runs.items()):
        methods = {"lora" if c == "lora-defaults" else c.split("{")[0] for c in configs}
        if "lora-defaults" not in configs or len(methods) < 6:  # an instance still running: too few choices yet
            continue
        group = (size, steps)
        seeds = sorted(configs["lora-defaults"])
        first = seeds[0]
        on_first = {c: s[first] for c, s in configs.items() if first in s}
        hindsight[group].append(max(on_first.values()) - on_first["lora-defaults"])
        if len(seeds) < 2:
            continue
        a, b = seeds[:2]
        both = {c: s for c, s in configs.items() if a in s and b in s}
        if len(both) < max(2, len(on_first)):  # a replicate still running: its ceiling would be over fewer choices
            continue
        gains, best, regret = [], [], []
        for fit_on, score_on in ((a, b), (b, a)):
            top = max(s[fit_on] for s in both.values())
            winners = [c for c in both if both[c][fit_on] == top]  # tied on one test set: each as likely
            scored = float(np.mean([both[c][score_on] for c in winners]))
            top_here = max(s[score_on] for s in both.values())
            gains.append(scored - both["lora-defaults"][score_on])
            best.append(top_here - both["lora-defaults"][score_on])
            regret.append(top_here - scored)
        crossed[group].append(float(np.mean(gains)))
        copy_regret[group].append(float(np.mean(regret)))
        paired_hindsight[group].append(float(np.mean(best)))
        per_task[group].append((task, round(float(np.mean(gains)), 2), round(float(np.mean(best)), 2)))

    rng = np.random.default_rng(0)
    out = []
    for group in sorted(set(hindsight) | set(crossed)):
        out.append(
            {
                "size": group[0],
                "steps": group[1],
                "hindsight": _summary(hindsight[group], rng),
                "cross_fitted": _summary(crossed[group], rng),
                "hindsight_on_replicated": _summary(paired_hindsight[group], rng),
                "other_seed_winner_regret": _summary(copy_regret[group], rng),
                "replicated_tasks": per_task[group],
            }
        )
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print("gain over LoRA at defaults any selector could reach (points; PEFT methods; mean [90% task bootstrap])")
    print(
        f"{'size':>5} {'steps':>5} | {'hindsight':>26} | {'cross-fitted':>26} | {'hindsight, same':>15} | "
        "other seed's winner's regret"
    )
    for row in out:
        h, c, p, r = (
            row[k] for k in ("hindsight", "cross_fitted", "hindsight_on_replicated", "other_seed_winner_regret")
        )

        def cell(s):
            if not s["instances"]:
                return "—"
            lo, hi = s["interval"]
            return f"{s['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] n={s['instances']}"

        print(
            f"{row['size']:>5} {row['steps']:>5} | {cell(h):>26} | {cell(c):>26} | "
            f"{(format(p['mean'], '+.2f') if p['instances'] else '—'):>15} | "
            f"{(format(r['mean'], '.2f') if r['instances'] else '—')}"
        )
        if row["replicated_tasks"]:
            print("      " + ", ".join(f"{t} {g:+.2f} ({b:+.2f})" for t, g, b in row["replicated_tasks"]))


if __name__ == "__main__":
    main()
