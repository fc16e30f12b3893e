"""What the experience says: per task the best method and every method's gap to it, how often each method
wins, accuracy against train-set size, accuracy/time/memory trade-offs and hyperparameter sensitivity.

A *cell* is a (task, train size, step budget, seed) tuple — the seed draws the training sample, so each seed is
another instance of the task at that size, and runs of another step budget are another contest; a method's score
in a cell is the best accuracy among its runs there (what a user would get after choosing that method and trying
those settings). Task-level scores average a method's cell scores over the task's cells. Cells that differ only by
seed measure the noise. Comparisons (wins, gaps, variation) count only cells in which at least ``MIN_METHODS``
methods (or every method of the experience, if fewer) ran: a cell a bench has only begun is no contest.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from ..experience import Experience, measured_memory, measured_time, task_group

MIN_METHODS = 5  # the methods a cell needs to count in comparisons (as in `metapeft evaluate`)
INSTANCE = ["task", "size", "steps"]  # a task at a train size and step budget; its cells differ by seed
CELL = [*INSTANCE, "seed"]


def frame(records: list[Experience]) -> pd.DataFrame:
    """One row per finished run with an accuracy."""
    rows = []
    for r in records:
        if r.status != "finished" or r.metrics.get("accuracy") is None:
            continue
        task = task_group(r)
        # the size trained on (a design size above a task's size trains on the whole task)
        size = r.profile.get("dataset_size") or r.tags.get("n_train") or r.tags.get("train_size") or 0
        rows.append(
            {
                "task": task,
                "size": int(size),
                "method": r.method,
                "accuracy": float(r.metrics["accuracy"]),
                "macro_f1": r.metrics.get("macro_f1"),
                "train_time_s": measured_time(r),
                "peak_memory_mb": measured_memory(r.metrics),
                "trainable_params": r.metrics.get("trainable_params"),
                "source": r.source,
                "config_id": r.tags.get("config_id"),
                "hyperparameters": r.hyperparameters,
                "seed": int(r.seed or 0),
                "steps": int(r.hyperparameters.get("max_steps") or 0),
                "eval_examples": int(r.metrics.get("eval_examples") or 0),
            }
        )
    return pd.DataFrame(rows)


def analyse(records: list[Experience]) -> dict:
    records = list({r.id: r for r in records}.values())  # the prior imported into one's own store counts once
    df = frame(records)
    finished_keys = {r.tags.get("design_key") for r in records if r.status == "finished"}
    failed = sum(
        1
        for r in records
        if r.status == "failed" and (r.tags.get("design_key") is None or r.tags["design_key"] not in finished_keys)
    )
    if df.empty:
        return {"runs": 0, "failed": failed, "tasks": 0, "methods": [], "per_task": {}}
    cells = (
        df.groupby([*CELL, "method"])
        .agg(score=("accuracy", "max"), eval_examples=("eval_examples", "min"))
        .reset_index()
    )
    best_in_cell = cells.groupby(CELL)["score"].transform("max")
    cells["gap"] = best_in_cell - cells["score"]
    cells["within_noise"] = _within_noise(cells["score"], best_in_cell, cells["eval_examples"])
    complete = cells.groupby(CELL).method.transform("nunique") >= min(MIN_METHODS, df.method.nunique())
    partial_cells = int(cells.loc[~complete].groupby(CELL).ngroups)

    per_task = {}
    for task, group in cells.groupby("task"):
        if complete[group.index].any():  # a task only begun is still listed, from what it has
            group = group.loc[complete[group.index]]
        by_method = group.groupby("method")["score"].mean()
        best = by_method.idxmax()
        per_task[task] = {
            "best_method": best,
            "best_accuracy": round(float(by_method.max()), 4),
            "sizes": sorted(int(s) for s in group["size"].unique()),
            "by_method": {
                m: {
                    "accuracy": round(float(a), 4),
                    "gap": round(float(by_method.max() - a), 4),
                    "runs": int((df.task == task).mul(df.method == m).sum()),
                }
                for m, a in by_method.sort_values(ascending=False).items()
            },
            "by_size": {int(size): _best(g.groupby("method").score.mean()) for size, g in group.groupby("size")},
        }

    cells = cells.loc[complete]
    winners = cells.loc[cells.gap == 0]
    n_cells = cells.groupby(CELL).ngroups
    wins: Counter = Counter()
    for _, group in winners.groupby(CELL):  # ties share the win
        for m in group.method:
            wins[m] += 1 / len(group)
    mean_gap = cells.groupby("method")["gap"].mean()
    single_best = mean_gap.idxmin()
    top_share = max(wins.values()) / n_cells if wins else 0.0

    by_size = cells.groupby(["method", "size"])["score"].mean().unstack("size")
    tradeoffs = df.groupby("method")[["accuracy", "train_time_s", "peak_memory_mb", "trainable_params"]].median()

    return {
        "runs": int(len(df)),
        "failed": failed,
        "tasks": int(df.task.nunique()),
        "cells": int(n_cells),
        "partial_cells": partial_cells,
        "methods": sorted(df.method.unique()),
        "sources": {k: int(v) for k, v in df.source.value_counts().items()},
        "min_methods_per_task": int(df.groupby("task").method.nunique().min()),
        "methods_per_task": {t: int(n) for t, n in df.groupby("task").method.nunique().items()},
        "per_task": per_task,
        "wins": {m: round(w, 2) for m, w in wins.most_common()},
        "variation": {
            "distinct_winners": int(winners.method.nunique()),
            "top_method": wins.most_common(1)[0][0] if wins else None,
            "top_method_win_share": round(top_share, 3),
            "single_best_method": single_best,
            "single_best_mean_regret": round(float(mean_gap.min()), 4),
            "single_best_max_regret": round(float(cells.loc[cells.method == single_best, "gap"].max()), 4),
            # a gap that the evaluation's sampling noise explains is no evidence that another method is better
            "single_best_within_noise_share": round(
                float(cells.loc[cells.method == single_best, "within_noise"].mean()), 3
            ),
            "methods_within_noise_of_best": round(float(cells.groupby(CELL).within_noise.sum().mean()), 2),
            "mean_spread_in_cell": round(float(cells.groupby(CELL).score.agg(lambda s: s.max() - s.min()).mean()), 4),
            "winner_changes_with_size": _winner_changes(per_task),
        },
        "mean_gap": {m: round(float(g), 4) for m, g in mean_gap.sort_values().items()},
        # share of cells in which the method has a finished run: gaps and wins only count cells it ran in
        "coverage": {m: round(float(c) / n_cells, 3) for m, c in cells.groupby("method").size().items()},
        "accuracy_by_size": {
            m: {int(s): round(float(v), 4) for s, v in row.dropna().items()} for m, row in by_size.iterrows()
        },
        "tradeoffs": {
            m: {k: (None if pd.isna(v) else round(float(v), 4)) for k, v in row.items()}
            for m, row in tradeoffs.iterrows()
        },
        "sensitivity": sensitivity(df),
        "noise": noise(cells),
    }


def _within_noise(score: pd.Series, best: pd.Series, n: pd.Series) -> pd.Series:
    """Whether a method's gap to its cell's best lies within two standard errors of the difference of two
    accuracies measured on ``n`` test examples each (binomial sampling noise; training noise would widen it)."""
    n = n.where(n > 0, np.nan)
    se = np.sqrt((score * (1 - score) + best * (1 - best)) / n)
    return (best - score) <= 2 * se.fillna(0)


def noise(cells: pd.DataFrame) -> dict:
    """Run-to-run noise from cells that differ only by seed: how far a method's score moves, and how often the
    winner stays the same."""
    multi = cells.groupby(INSTANCE).seed.nunique()
    multi = multi[multi > 1]
    if multi.empty:
        return {"task_sizes": 0}
    sub = cells.set_index(INSTANCE).loc[multi.index].reset_index()
    spread = sub.groupby([*INSTANCE, "method"]).score.agg(lambda s: s.max() - s.min())
    winners = sub.loc[sub.groupby(CELL).score.idxmax()]
    agree = winners.groupby(INSTANCE).method.nunique().eq(1).mean()
    # regret, in one seed's cell, of the method that won another seed's cell of the same task and size: what a
    # selector that had seen a whole replicate of the task would lose to noise — one that sees only the task's
    # profile cannot expect to do better
    regrets = []
    for _, g in sub.groupby(INSTANCE):
        scores = g.pivot_table(index="seed", columns="method", values="score").dropna(axis=1)
        for a in scores.index:
            for b in scores.index.drop(a):
                regrets.append(scores.loc[b].max() - scores.loc[b, scores.loc[a].idxmax()])
    return {
        "task_sizes": int(len(multi)),
        "mean_abs_seed_difference": round(float(spread.mean()), 4),
        "p90_abs_seed_difference": round(float(spread.quantile(0.9)), 4),
        "winner_agreement": round(float(agree), 3),
        "replicate_regret": round(float(np.mean(regrets)), 4),
    }


def _best(scores: pd.Series) -> dict:
    """Best method among ``scores`` (indexed by method) and the spread between best and worst."""
    return {
        "best_method": scores.idxmax(),
        "best_accuracy": round(float(scores.max()), 4),
        "spread": round(float(scores.max() - scores.min()), 4),
    }


def _winner_changes(per_task: dict) -> float | None:
    """Share of tasks with several sizes whose best method differs between sizes (None: no such task)."""
    multi = [t for t in per_task.values() if len(t["by_size"]) > 1]
    if not multi:
        return None
    return round(sum(len({s["best_method"] for s in t["by_size"].values()}) > 1 for t in multi) / len(multi), 3)


def sensitivity(df: pd.DataFrame) -> dict:
    """Per method and numeric hyperparameter: Spearman correlation with accuracy relative to its cell's mean
    (log scale for learning rates), over the method's runs with varied settings."""
    from scipy.stats import spearmanr

    df = df.assign(relative=df.accuracy - df.groupby(CELL).accuracy.transform("mean"))
    out = {}
    for method, group in df.groupby("method"):
        params = pd.DataFrame(list(group.hyperparameters), index=group.index)
        result = {}
        for name in params.columns:
            values = pd.to_numeric(params[name], errors="coerce")
            keep = values.notna()
            values, relative = values[keep], group.relative[keep]
            if values.nunique() < 3:
                continue
            if "learning_rate" in name:
                values = np.log10(values.clip(lower=1e-12))
            rho = spearmanr(values, relative).statistic
            if not math.isnan(rho):
                result[name] = {"spearman": round(float(rho), 3), "n": int(len(values))}
        if result:
            out[method] = result
    return out
