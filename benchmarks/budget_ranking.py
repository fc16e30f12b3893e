"""Does the methods' ranking at 80 steps hold at 320 (issue 21, item 2; the step budget of issue 22's passes)?

The curves bench (``benchmarks/designs/curves-v1.json``) runs every method at its defaults on 1,024 examples of 12
suite tasks twice: for 80 steps (1.25 epochs, the prior's budget) and for 320 (5 epochs), final accuracy on 1,000
held-out examples, seed 0. Per task with both passes complete: Spearman's rho between the ten methods' accuracies
at the two budgets, whether the winner changes, the best-to-worst spread; per method, the mean gain from 80 to 320
steps and the mean rank at each budget.

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


def accuracies(records) -> dict[str, dict[int, dict[str, float]]]:
    """task → steps → method → final accuracy, for the bench's runs at the methods' defaults."""
    out: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        steps = int(r.metrics.get("steps") or 0)
        if r.status == "finished" and steps in BUDGETS and r.tags.get("config_id", "").startswith("default"):
            out[r.task_name.split("@")[0]][steps][r.method] = float(r.metrics["accuracy"])
    return out


def summarise(acc: dict, methods: int) -> dict:
    from scipy.stats import spearmanr

    tasks, gains, ranks = [], defaultdict(list), {b: defaultdict(list) for b in BUDGETS}
    for task, by in sorted(acc.items()):
        short, long = by.get(BUDGETS[0], {}), by.get(BUDGETS[1], {})
        names = sorted(set(short) & set(long))  # the methods run at both budgets
        if len(names) < methods:
            continue
        a, b = np.array([short[m] for m in names]), np.array([long[m] for m in names])
        for budget, values in zip(BUDGETS, (a, b)):
            order = (-values).argsort().argsort() + 1  # 1 = best
            for m, rank in zip(names, order):
                ranks[budget][m].append(int(rank))
        for m in names:
            gains[m].append(100 * (long[m] - short[m]))
        tasks.append(
            {
                "task": task,
                "spearman": round(float(spearmanr(a, b).statistic), 3),
                "winner_80": names[int(a.argmax())],
                "winner_320": names[int(b.argmax())],
                "winner_changed": names[int(a.argmax())] != names[int(b.argmax())],
                "winner_80_at_320_behind_points": round(100 * float(b.max() - b[int(a.argmax())]), 2),
                "spread_80": round(100 * float(a.max() - a.min()), 2),
                "spread_320": round(100 * float(b.max() - b.min()), 2),
            }
        )
    per_method = {
        m: {
            "mean_gain_points": round(float(np.mean(g)), 2),
            "min_gain_points": round(float(np.min(g)), 2),
            "mean_rank_80": round(float(np.mean(ranks[BUDGETS[0]][m])), 2),
            "mean_rank_320": round(float(np.mean(ranks[BUDGETS[1]][m])), 2),
        }
        for m, g in sorted(gains.items(), key=lambda kv: -np.mean(kv[1]))
    }
    rho = [t["spearman"] for t in tasks]
    return {
        "tasks": len(tasks),
        "mean_spearman": round(float(np.mean(rho)), 3) if rho else None,
        "min_spearman": round(float(np.min(rho)), 3) if rho else None,
        "winner_changed": sum(t["winner_changed"] for t in tasks),
        "per_task": tasks,
        "per_method": per_method,
    }


def table(s: dict) -> str:
    out = [
        f"{s['tasks']} tasks; mean Spearman {s['mean_spearman']} (lowest {s['min_spearman']}); "
        f"the winner changed on {s['winner_changed']}",
        "",
        "| task | Spearman 80 vs 320 | winner at 80 | winner at 320 | 80-step winner behind at 320 | spread 80 → 320 |",
        "|---|---:|---|---|---:|---:|",
    ]
    for t in s["per_task"]:
        out.append(
            f"| {t['task']} | {t['spearman']:+.2f} | {t['winner_80']} | {t['winner_320']} | "
            f"{t['winner_80_at_320_behind_points']:.1f} | {t['spread_80']:.1f} → {t['spread_320']:.1f} |"
        )
    out += [
        "",
        "| method | mean gain 80 → 320 (points) | smallest | mean rank at 80 | at 320 |",
        "|---|---:|---:|---:|---:|",
    ]
    for m, v in s["per_method"].items():
        out.append(
            f"| {m} | {v['mean_gain_points']:+.1f} | {v['min_gain_points']:+.1f} | {v['mean_rank_80']:.1f} | "
            f"{v['mean_rank_320']:.1f} |"
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
    s = summarise(accuracies(records), args.methods)
    print(table(s))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(s, indent=2) + "\n")


if __name__ == "__main__":
    main()
