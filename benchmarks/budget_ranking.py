"""Does the methods' ranking at 80 steps hold at 320 (issue 21, item 2; the step budget of issue 22's passes)?

The curves bench (``benchmarks/designs/curves-v1.json``) runs every method at its defaults on 1,024 examples of 12
suite tasks twice: for 80 steps (1.25 epochs, the prior's budget) and for 320 (5 epochs), final accuracy on 1,000
held-out examples, seed 0. Per task with both passes complete: Spearman's rho between the ten methods' accuracies
at the two budgets, whether the winner changes, the best-to-worst spread; per method, the mean gain from 80 to 320
steps and the mean rank at each budget.

Three figures guard against reading test-row noise as a ranking change:
- the **noise ceiling**: the Spearman two independent draws of 1,000 test rows would give between the *same* 320-step
  models (a bootstrap over the stored per-example outcomes, rows resampled alike for every method, two draws per
  replicate). An 80-vs-320 Spearman near it says the ranking held as well as the test set can tell; training-seed
  noise (not measured here) would lower the ceiling further.
- the **winner change's p**: a paired bootstrap over the test rows, the share of draws in which the 80-step winner
  scores at least as well at 320 steps as the 320-step winner (near 0.5: a tie the test set cannot split).
- the **80-step pick's regret at 320**: how far behind, at 320 steps, the method that was best at 80 ends. This is
  what selecting at 80 steps costs a user who trains for 320.
All three are given for every method and for PEFT methods only (full fine-tuning and head-only left out). Whether 320
steps is itself near convergence: the mean gain over each 320-step run's last 80 curve steps scored on the curve's own
300 examples (200 → 280; the point at 320 is scored on the final 1,000).

    uv run python benchmarks/budget_ranking.py                                  # the committed export
    uv run python benchmarks/budget_ranking.py --store sqlite:///$PWD/.bench/curves.db
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

EXPORT = Path(__file__).parent / "results" / "curves-v1.jsonl.gz"
BUDGETS = (80, 320)
NOT_PEFT = ("full_finetuning", "head_only")


def runs(records) -> dict[str, dict[int, dict[str, object]]]:
    """task → steps → method → record, for the bench's finished runs at the methods' defaults."""
    out: dict[str, dict[int, dict[str, object]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        steps = int(r.metrics.get("steps") or 0)
        if r.status == "finished" and steps in BUDGETS and r.tags.get("config_id", "").startswith("default"):
            out[r.task_name.split("@")[0]][steps][r.method] = r
    return out


def noise_ceiling(records: list, draws: int = 500, seed: int = 0) -> float | None:
    """Mean Spearman between the methods' accuracies on two independent bootstrap draws of the test rows."""
    from scipy.stats import spearmanr

    from metapeft.experience import paired_outcomes

    correct = paired_outcomes(records)  # methods × rows
    if correct is None:
        return None
    rng = np.random.default_rng(seed)
    n = correct.shape[1]
    rho = [
        spearmanr(correct[:, rng.integers(0, n, n)].mean(1), correct[:, rng.integers(0, n, n)].mean(1)).statistic
        for _ in range(draws)
    ]
    return float(np.nanmean(rho))


def change_p(pick, best, draws: int = 2000, seed: int = 0) -> float | None:
    """Paired bootstrap over the test rows: the share of draws in which ``pick`` scores at least ``best`` (both
    320-step runs of one task, scored on the same rows). Small: the winner really changed; near 0.5: a tie."""
    from metapeft.experience import paired_outcomes

    correct = paired_outcomes([pick, best])
    if correct is None:
        return None
    diff = correct[0].astype(int) - correct[1].astype(int)
    rng = np.random.default_rng(seed)
    return float(np.mean([diff[rng.integers(0, len(diff), len(diff))].sum() >= 0 for _ in range(draws)]))


def late_gain(record, steps: int = 80) -> float | None:
    """Points gained over the last ``steps`` steps measured on the curve's own examples (the final point is scored
    on the larger final set, so it is left out): 200 → 280 on a 320-step run with a point every 40."""
    curve = record.curve or []
    same = [
        p
        for p in curve[:-1]
        if p.get("accuracy") is not None and p.get("eval_examples") == curve[0].get("eval_examples")
    ]
    start = [p for p in same if p["step"] == same[-1]["step"] - steps] if same else []
    return 100 * (same[-1]["accuracy"] - start[0]["accuracy"]) if start else None


def summarise(by_task: dict, methods: int, peft_only: bool = False) -> dict:
    from scipy.stats import spearmanr

    tasks, gains, ranks = [], defaultdict(list), {b: defaultdict(list) for b in BUDGETS}
    tail = defaultdict(list)
    for task, by in sorted(by_task.items()):
        short, long = by.get(BUDGETS[0], {}), by.get(BUDGETS[1], {})
        names = sorted(m for m in set(short) & set(long) if not (peft_only and m in NOT_PEFT))  # run at both budgets
        if len(names) < methods - (len(NOT_PEFT) if peft_only else 0):
            continue
        a = np.array([short[m].metrics["accuracy"] for m in names])
        b = np.array([long[m].metrics["accuracy"] for m in names])
        for m, x, y in zip(names, a, b):
            gains[m].append(100 * (y - x))
            if (g := late_gain(long[m])) is not None:
                tail[m].append(g)
        for budget, values in zip(BUDGETS, (a, b)):
            order = (-values).argsort().argsort() + 1  # 1 = best
            for m, rank in zip(names, order):
                ranks[budget][m].append(int(rank))
        tasks.append(
            {
                "task": task,
                "spearman": round(float(spearmanr(a, b).statistic), 3),
                "winner_80": names[int(a.argmax())],
                "winner_320": names[int(b.argmax())],
                "winner_changed": names[int(a.argmax())] != names[int(b.argmax())],
                "winner_change_p": change_p(long[names[int(a.argmax())]], long[names[int(b.argmax())]]),
                "winner_80_at_320_behind_points": round(100 * float(b.max() - b[int(a.argmax())]), 2),
                "spread_80": round(100 * float(a.max() - a.min()), 2),
                "spread_320": round(100 * float(b.max() - b.min()), 2),
                "noise_ceiling": None if (c := noise_ceiling([long[m] for m in names])) is None else round(c, 3),
            }
        )
    per_method = {
        m: {
            "mean_gain_points": round(float(np.mean(g)), 2),
            "min_gain_points": round(float(np.min(g)), 2),
            "mean_rank_80": round(float(np.mean(ranks[BUDGETS[0]][m])), 2),
            "mean_rank_320": round(float(np.mean(ranks[BUDGETS[1]][m])), 2),
            "mean_gain_200_to_280_points": round(float(np.mean(tail[m])), 2) if tail[m] else None,
        }
        for m, g in sorted(gains.items(), key=lambda kv: -np.mean(kv[1]))
    }
    rho = [t["spearman"] for t in tasks]
    ceiling = [t["noise_ceiling"] for t in tasks if t["noise_ceiling"] is not None]
    regret = [t["winner_80_at_320_behind_points"] for t in tasks]
    return {
        "peft_only": peft_only,
        "tasks": len(tasks),
        "mean_spearman": round(float(np.mean(rho)), 3) if rho else None,
        "min_spearman": round(float(np.min(rho)), 3) if rho else None,
        "mean_noise_ceiling": round(float(np.mean(ceiling)), 3) if ceiling else None,
        "winner_changed": sum(t["winner_changed"] for t in tasks),
        "winner_changed_p_below_0.05": sum(t["winner_changed"] and (t["winner_change_p"] or 1) < 0.05 for t in tasks),
        "mean_regret_of_80_step_pick_points": round(float(np.mean(regret)), 2) if regret else None,
        "max_regret_of_80_step_pick_points": round(float(np.max(regret)), 2) if regret else None,
        "per_task": tasks,
        "per_method": per_method,
    }


def table(s: dict) -> str:
    out = [
        f"{'PEFT methods only' if s['peft_only'] else 'Every method'}: {s['tasks']} tasks; mean Spearman "
        f"{s['mean_spearman']} (lowest {s['min_spearman']}; test-noise ceiling {s['mean_noise_ceiling']}); the winner "
        f"changed on {s['winner_changed']} ({s['winner_changed_p_below_0.05']} at p < 0.05); the 80-step "
        "pick's regret at 320: mean "
        f"{s['mean_regret_of_80_step_pick_points']}, worst {s['max_regret_of_80_step_pick_points']} points",
        "",
        "| task | Spearman 80 vs 320 | noise ceiling | winner at 80 | winner at 320 | 80-step winner behind at 320 "
        "| p (change) | spread 80 → 320 |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for t in s["per_task"]:
        ceiling = "–" if t["noise_ceiling"] is None else f"{t['noise_ceiling']:+.2f}"
        change = "–" if t["winner_change_p"] is None or not t["winner_changed"] else f"{t['winner_change_p']:.2f}"
        out.append(
            f"| {t['task']} | {t['spearman']:+.2f} | {ceiling} | {t['winner_80']} | {t['winner_320']} | "
            f"{t['winner_80_at_320_behind_points']:.1f} | "
            f"{change} | "
            f"{t['spread_80']:.1f} → {t['spread_320']:.1f} |"
        )
    out += [
        "",
        "| method | mean gain 80 → 320 (points) | smallest | mean rank at 80 | at 320 | gain 200 → 280 (curve) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, v in s["per_method"].items():
        tail = v["mean_gain_200_to_280_points"]
        out.append(
            f"| {m} | {v['mean_gain_points']:+.1f} | {v['min_gain_points']:+.1f} | {v['mean_rank_80']:.1f} | "
            f"{v['mean_rank_320']:.1f} | {'–' if tail is None else f'{tail:+.1f}'} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="the curves bench's store (default: the committed export)")
    parser.add_argument("--methods", type=int, default=10, help="a task counts once this many methods ran at both")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    from metapeft.experience import ExperienceStore, read_jsonl

    records = ExperienceStore(args.store).iter(status="finished") if args.store else read_jsonl(EXPORT)
    by_task = runs(records)
    every, peft = summarise(by_task, args.methods), summarise(by_task, args.methods, peft_only=True)
    print(table(every) + "\n\n" + table(peft))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"every_method": every, "peft_only": peft}, indent=2) + "\n")


if __name__ == "__main__":
    main()
