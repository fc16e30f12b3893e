"""Leave-one-task-out evaluation of method selection, against baselines.

For each task of the experience, every run of it (all its sizes) is held out; the selector is fitted on the other
tasks and, from the held-out task's profile alone, ranks the configurations that were actually run on it. Since
their accuracies are known, the choice can be scored: regret (best run minus chosen run, in accuracy points),
top-1 (the chosen method is a best method), regret@3, NDCG of the method ranking, calibration of the
best-method confidence, and coverage of the 90% intervals.

Every selector follows the meta-learners' protocol: ``fit(experiences)``, then ``predict(profile, candidates)``,
which returns a :class:`Prediction` (baselines without uncertainty leave ``samples`` empty).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import numpy as np

from ..experience import Experience
from ._embedding import TaskFeaturizer, cells_of, method_gaps
from ._features import at_defaults, cell_key, measured_memory, task_group, usable
from ._recommend import cautious_choice, incumbent_method, rank_methods
from ._surrogate import Candidate, Prediction, Surrogate


class _ScoreOnly:
    """Baselines predict a score per candidate, no intervals."""

    def _prediction(self, scores: np.ndarray) -> Prediction:
        mean = np.zeros((len(scores), 3))
        mean[:, 0] = scores
        return Prediction(mean, mean.copy(), mean.copy(), None)


class AlwaysMethod(_ScoreOnly):
    """What most users do today: one method at its defaults (LoRA), whatever the task."""

    def __init__(self, method: str = "lora"):
        self.method = method

    def fit(self, records: list[Experience]) -> AlwaysMethod:
        return self

    def predict(self, profile: dict, candidates: list[Candidate]) -> Prediction:
        return self._prediction(np.array([(c.method == self.method) + 0.5 * (c.method == self.method and at_defaults(c.method, c.hyperparameters)) for c in candidates], float))


class GlobalBest(_ScoreOnly):
    """The method with the smallest mean gap to the best across past task instances, at its defaults."""

    def fit(self, records: list[Experience]) -> GlobalBest:
        self.gap = method_gaps(cells_of(records))
        return self

    def predict(self, profile: dict, candidates: list[Candidate]) -> Prediction:
        return self._prediction(np.array([-self.gap.get(c.method, 1.0) + 1e-3 * at_defaults(c.method, c.hyperparameters) for c in candidates]))


class RandomChoice(_ScoreOnly):
    """A configuration drawn at random (averaged over many draws by the evaluation)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def fit(self, records: list[Experience]) -> RandomChoice:
        return self

    def predict(self, profile: dict, candidates: list[Candidate]) -> Prediction:
        return self._prediction(self.rng.random(len(candidates)))


class NearestNeighbours(_ScoreOnly):
    """k nearest past task instances on the raw (standardised) profile features; each method is scored by its
    mean gap to the best on those neighbours."""

    def __init__(self, k: int = 3):
        self.k = k

    def fit(self, records: list[Experience]) -> NearestNeighbours:
        self.cells = cells_of(records)
        self.featurizer = TaskFeaturizer().fit([c.profile for c in self.cells])
        self.x = self.featurizer.transform([c.profile for c in self.cells])
        return self

    def predict(self, profile: dict, candidates: list[Candidate]) -> Prediction:
        d = np.linalg.norm(self.x - self.featurizer.transform([profile])[0], axis=1)
        near = [self.cells[i] for i in np.argsort(d)[: self.k]]
        score = {}
        for m in {c.method for c in candidates}:
            gaps = [c.best_accuracy - c.scores[m] for c in near if m in c.scores]
            score[m] = -float(np.mean(gaps)) if gaps else -1.0
        return self._prediction(np.array([score[c.method] + 1e-3 * at_defaults(c.method, c.hyperparameters) for c in candidates]))


def select(pred: Prediction, candidates: list[Candidate], incumbent: str | None = None) -> tuple[list[str], dict[str, int], np.ndarray]:
    """The same rule as ``MetaPEFT.recommend``: per method the candidate with the best cautious score (mean minus
    half an sd), methods ranked by that candidate's mean, ``incumbent`` first unless surely beaten (``rank_methods``).
    Returns the ranking, the chosen candidate per method and each ranked method's probability of being best."""
    chosen = cautious_choice(pred, [c.method for c in candidates])
    ranking = rank_methods(pred, chosen, incumbent)
    return ranking, chosen, pred.take([chosen[m] for m in ranking]).best_probability()


def score_cell(pred: Prediction, candidates: list[Candidate], accuracy: np.ndarray, costs: np.ndarray | None = None, incumbent: str | None = None) -> dict:
    """Regret, top-1, NDCG, confidence and 90%-interval coverage of one ranking; ``costs`` (n × 2: train time s,
    peak memory MB, NaN where not measured comparably) adds the coverage of the time and memory intervals."""
    ranking, chosen, probs = select(pred, candidates, incumbent)
    method_best = {m: max(accuracy[i] for i, c in enumerate(candidates) if c.method == m) for m in ranking}
    best = max(method_best.values())
    best_methods = {m for m, a in method_best.items() if a >= best - 1e-9}
    picked = [accuracy[chosen[m]] for m in ranking]
    rel = np.array([method_best[m] for m in ranking])
    spread = rel.max() - rel.min()
    gains = (rel - rel.min()) / spread if spread > 0 else np.ones_like(rel)
    discounts = 1 / np.log2(np.arange(2, len(rel) + 2))
    ndcg = float((gains * discounts).sum() / (np.sort(gains)[::-1] * discounts).sum())
    inside = (pred.low[:, 0] - 1e-9 <= accuracy) & (accuracy <= pred.high[:, 0] + 1e-9)
    out = {
        "regret": 100 * (best - picked[0]),
        "regret_at_3": 100 * (best - max(picked[:3])),
        "top1": float(ranking[0] in best_methods),
        # what the confidence is scored against: methods tied for best share the win, as the confidences (summing
        # to 1) must; scoring a tie as a win for each makes any such confidence look too low
        "best_share": float(ranking[0] in best_methods) / len(best_methods),
        "ndcg": ndcg,
        "confidence": float(probs[0]),
        "coverage": float(inside.mean()),
        "runs": len(candidates),
    }
    if costs is not None:
        for j, key in ((1, "coverage_time"), (2, "coverage_memory")):
            seen = ~np.isnan(costs[:, j - 1])
            value = costs[seen, j - 1]
            out[key] = float(((pred.low[seen, j] <= value) & (value <= pred.high[seen, j])).mean()) if seen.any() else math.nan
    return out


def expected_calibration_error(confidence: list[float], correct: list[float], bins: int = 10) -> float:
    conf, corr = np.asarray(confidence), np.asarray(correct)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - corr[inside].mean())
    return float(ece)


SELECTORS: dict[str, Callable[[], object]] = {
    "metapeft": Surrogate,
    "always_lora": AlwaysMethod,
    "global_best": GlobalBest,
    "random": RandomChoice,
    "knn_profile": NearestNeighbours,
}


def evaluate(records: list[Experience], *, selectors: dict[str, Callable[[], object]] | None = None, few_shot: int = 2,
             random_repeats: int = 50, min_methods: int = 5, progress: Callable[[int, int, str], None] | None = None,
             held_out: list[str] | None = None) -> dict:  # fmt: skip
    """Leave-one-task-out over ``records``. Task instances with runs of fewer than ``min_methods`` methods are
    not scored (too small a choice to measure selection, e.g. a task the bench is still running), though their
    runs still train the selectors. ``few_shot`` > 0 also measures conditioning on that many observed runs of
    the held-out task instance (the rest are scored). ``held_out`` limits the tasks held out (and scored) to these
    task groups (default: every task)."""
    from scipy.stats import wilcoxon

    selectors = selectors or SELECTORS
    records = [r for r in {r.id: r for r in records}.values() if usable(r)]
    groups = sorted({task_group(r) for r in records})
    if len(groups) < 3:
        raise ValueError(f"leave-one-task-out needs runs on at least 3 tasks; the experience has {len(groups)}")
    if held_out is not None:
        groups = [g for g in groups if g in set(held_out)]
    per_cell: dict[str, list[dict]] = defaultdict(list)
    floor: list[dict] = []
    few: list[dict] = []
    embedding_rho: list[float] = []
    for n, held in enumerate(groups):
        if progress:
            progress(n, len(groups), held)
        train = [r for r in records if task_group(r) != held]
        test = defaultdict(list)
        for r in records:
            if task_group(r) == held:
                test[cell_key(r)].append(r)
        for runs in test.values():
            if len({r.method for r in runs}) >= min_methods:
                floor.append({"task": held, **_noise_floor(runs, seed=len(floor))})
        incumbent = incumbent_method(cells_of(train))  # the ranking rule reads it only with joint draws (not the baselines)
        for name, make in selectors.items():
            model = make().fit(train)
            repeats = random_repeats if name == "random" else 1
            for runs in test.values():
                if len({r.method for r in runs}) < min_methods:
                    continue
                cands = [Candidate(r.method, r.hyperparameters) for r in runs]
                acc = np.array([r.metrics["accuracy"] for r in runs])
                costs = np.array([[r.metrics.get("train_time_s") or math.nan, measured_memory(r.metrics) or math.nan] for r in runs], dtype=float)
                cells = [score_cell(model.predict(runs[0].profile, cands), cands, acc, costs, incumbent) for _ in range(repeats)]
                per_cell[name].append({"task": held, "cell": runs[0].task_name, **{k: float(np.mean([c[k] for c in cells])) for k in cells[0]}})
                if name == "metapeft" and few_shot and len(runs) > few_shot + 1:
                    few.append(_few_shot(model, runs, few_shot, seed=len(few)))
            if name == "metapeft":
                embedding_rho += _embedding_agreement(model.embedder, train, [r for runs in test.values() for r in runs])
    if progress:
        progress(len(groups), len(groups), "")
    if not per_cell:
        raise ValueError(f"no task instance has runs of at least {min_methods} methods")
    out = {"tasks": len({r["task"] for r in next(iter(per_cell.values()))}), "cells": len(next(iter(per_cell.values()))), "runs": len(records), "selectors": {}}
    per_task = {name: _by_task(rows) for name, rows in per_cell.items()}
    for name, rows in per_cell.items():
        tasks = per_task[name]
        summary = {
            "mean_regret": round(float(np.mean(list(tasks.values()))), 3),
            "worst_task_regret": round(float(max(tasks.values())), 3),
            "worst_cell_regret": round(float(max(r["regret"] for r in rows)), 3),
            "regret_at_3": round(float(np.mean([r["regret_at_3"] for r in rows])), 3),
            "top1": round(float(np.mean([r["top1"] for r in rows])), 3),
            "ndcg": round(float(np.mean([r["ndcg"] for r in rows])), 3),
        }
        if name == "metapeft":
            summary["embedding_spearman"] = round(float(np.nanmean(embedding_rho)), 3) if embedding_rho else None
            summary["ece"] = round(expected_calibration_error([r["confidence"] for r in rows], [r["best_share"] for r in rows]), 3)
            summary["ece_ties_as_wins"] = round(expected_calibration_error([r["confidence"] for r in rows], [r["top1"] for r in rows]), 3)
            summary["coverage_90"] = round(float(np.mean([r["coverage"] for r in rows])), 3)
            for key in ("time", "memory"):  # cells without a comparable measurement are left out
                values = [r[f"coverage_{key}"] for r in rows if not math.isnan(r[f"coverage_{key}"])]
                summary[f"coverage_90_{key}"] = round(float(np.mean(values)), 3) if values else None
        out["selectors"][name] = summary
    out["noise_floor"] = {"mean_regret": round(float(np.mean(list(_by_task(floor).values()))), 3), "top1": round(float(np.mean([f["top1"] for f in floor])), 3)}
    ours = per_task.get("metapeft")
    if ours:
        for name, tasks in per_task.items():
            if name == "metapeft":
                continue
            a = np.array([ours[t] for t in sorted(ours)])
            b = np.array([tasks[t] for t in sorted(ours)])
            p = float(wilcoxon(a, b, alternative="less").pvalue) if np.any(a != b) else 1.0
            out["selectors"][name]["wilcoxon_p_ours_lower"] = round(p, 4) if not math.isnan(p) else None
        out["per_task_regret"] = {t: {name: round(per_task[name][t], 2) for name in per_task} for t in sorted(ours)}
    if few:
        out["few_shot"] = {
            "observed_runs": few_shot,
            "cells": len(few),
            **{k: round(float(np.mean([f[k] for f in few])), 4) for k in few[0]},
        }
    return out


def _noise_floor(runs: list[Experience], seed: int, draws: int = 2000) -> dict:
    """Regret and top-1 of a selector that knows every run's true accuracy, caused by the evaluation's sampling
    noise alone: the recorded accuracies stand for the truth, each is re-measured on as many test examples
    (binomial noise), and the truly best is scored against the re-measured best. A lower bound on what any
    selector can reach here: training-seed noise is left out, and recorded accuracies spread wider than the truth."""
    rng = np.random.default_rng(seed)
    acc = np.array([r.metrics["accuracy"] for r in runs])
    n = np.array([r.metrics.get("eval_examples") or 300 for r in runs])
    measured = rng.binomial(n, np.clip(acc, 0, 1), size=(draws, len(runs))) / n
    truth = int(np.argmax(acc))
    by_method = defaultdict(list)
    for i, r in enumerate(runs):
        by_method[r.method].append(i)
    best = measured.max(1)
    method_best = measured[:, by_method[runs[truth].method]].max(1)  # top-1 asks for the method, as score_cell does
    return {"regret": 100 * float((best - measured[:, truth]).mean()), "top1": float((method_best >= best - 1e-9).mean())}


def _by_task(rows: list[dict]) -> dict[str, float]:
    by = defaultdict(list)
    for r in rows:
        by[r["task"]].append(r["regret"])
    return {t: float(np.mean(v)) for t, v in by.items()}


def _embedding_agreement(embedder, train: list[Experience], held: list[Experience]) -> list[float]:
    """Per held-out task instance: Spearman correlation between its embedding distances to the past instances and
    the distances between their performance vectors (how well the embedding places a task it never saw)."""
    from scipy.stats import spearmanr

    from ._embedding import performance_distances

    past, new = cells_of(train), cells_of(held)
    if not past or not new:
        return []
    dist, valid = performance_distances(new + past, embedder.methods)
    z = embedder.predict([c.profile for c in new + past])
    out = []
    for i in range(len(new)):
        keep = valid[i, len(new):]
        if keep.sum() >= 3:
            d = np.linalg.norm(z[len(new):] - z[i], axis=1)
            out.append(float(spearmanr(d[keep], dist[i, len(new):][keep]).statistic))
    return out


def _few_shot(model: Surrogate, runs: list[Experience], k: int, seed: int) -> dict:
    """Observe ``k`` random runs of a task instance, predict the others: accuracy error and interval coverage
    with and without conditioning on the observed runs."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(runs))
    seen, rest = [runs[i] for i in order[:k]], [runs[i] for i in order[k:]]
    cands = [Candidate(r.method, r.hyperparameters) for r in rest]
    acc = np.array([r.metrics["accuracy"] for r in rest])
    cold = model.predict(rest[0].profile, cands)
    warm = model.predict(rest[0].profile, cands, observed=seen)
    # the conditioning moves the task's level, not the order of its configurations: accuracy error and interval
    # coverage are what it can change
    return {
        "mae_zero_shot": 100 * float(np.abs(cold.mean[:, 0] - acc).mean()),
        "mae_conditioned": 100 * float(np.abs(warm.mean[:, 0] - acc).mean()),
        "coverage_zero_shot": float(((cold.low[:, 0] <= acc) & (acc <= cold.high[:, 0])).mean()),
        "coverage_conditioned": float(((warm.low[:, 0] <= acc) & (acc <= warm.high[:, 0])).mean()),
    }
