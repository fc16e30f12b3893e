"""Leave-one-task-out evaluation of method selection, paired against the choices users make without it.

For each task of the experience, every run of it (all its sizes) is held out; the selector is fitted on the other
tasks and, from the held-out task's profile alone, ranks the configurations that were actually run on each of its
task instances (the task at one training-set size and step budget), within a :class:`Constraint` (allowed
methods, PEFT only, a memory limit). Since those runs' accuracies are known, the choice is scored:

- **paired gain** of the pick over references a user would run otherwise, in the same instance: LoRA at its
  defaults, always full fine-tuning, and the median allowed configuration. Per task (mean over its instances), with
  a 90% interval from resampling tasks, a one-sided Wilcoxon p and the share of tasks won; by training-set size too;
- the **ceiling** of those gains: the same figures for the best allowed run of each instance, chosen knowing its
  test accuracy (what no selector can beat among the runs that exist);
- **regret** (best run minus chosen run, in accuracy points), regret@3, top-1, NDCG; the **disaster rate** (share of
  instances with regret > 5) and the worst instance;
- **cross-fitted regret** where an instance was trained on two training seeds: the best configuration chosen on
  seed A, everything scored on seed B (and the reverse). Plain regret is biased upwards: the best of many noisy runs
  beats their true best (the winner's curse), so even the truly best choice shows regret. Cross-fitting removes
  that bias: a selector that knew the true accuracies would score ≤ 0 in expectation;
- calibration of the best-method confidence (ECE), coverage of the 90% intervals and their median width.

The **winner's-curse offset** (formerly called a noise floor) is reported for what it is: E[max of noisy runs] −
max of their true accuracies under the test set's sampling noise alone; it is the same for every selector and is
not a lower bound on regret (runs scored on the same rows are not independent, and training-seed noise is left
out). The replicate evidence beside it is the plain regret of copying the other seed's winner.

Every selector follows one protocol (:class:`~metapeft.meta.Selector`: ``fit``, ``partial_fit``, ``predict``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._errors import OptionError
from ..experience import (
    Experience,
    budget_key,
    cell_key,
    examples_seen,
    measured_memory,
    measured_time,
    paired_outcomes,
    task_group,
    usable,
)
from ..methods import BUDGET_FIELDS
from ._embedding import TaskFeaturizer, cells_of, method_gaps
from ._features import at_defaults
from ._protocol import Selector
from ._recommend import Incumbents, cautious_choice, rank_methods
from ._surrogate import Candidate, Prediction, Surrogate

DISASTER = 5.0  # regret (points) above which a choice counts as a disaster
REFERENCES = ("lora_defaults", "full_finetuning", "median")


@dataclass
class Constraint:
    """What the user allows the selection to choose from (it learns from every run, whatever the constraint)."""

    methods: list[str] | None = None  # allowed methods (default: all)
    peft_only: bool = False  # only methods that fine-tune the encoder through an adapter or virtual tokens
    max_memory_mb: float | None = None  # only runs whose measured peak memory is within this

    def __post_init__(self) -> None:
        from ..methods import get_method, list_methods

        if self.methods is not None:
            if isinstance(self.methods, str) or not self.methods:
                raise OptionError("methods", f"must be a non-empty list of method names, got {self.methods!r}")
            for name in self.methods:
                get_method(name)
        if self.max_memory_mb is not None and not (
            isinstance(self.max_memory_mb, (int, float)) and self.max_memory_mb > 0
        ):
            raise OptionError("max_memory_mb", f"must be a positive number of MB, got {self.max_memory_mb!r}")
        if not self.allowed:
            chosen = ", ".join(self.methods or [m.name for m in list_methods()])
            raise OptionError(
                "peft_only",
                f"leaves no method: none of {chosen} is a PEFT method (an adapter or virtual tokens); allow one, or "
                "drop the PEFT-only constraint",
            )

    @property
    def allowed(self) -> list[str]:
        from ..methods import get_method, list_methods

        names = self.methods or [m.name for m in list_methods()]
        return [m for m in names if not self.peft_only or get_method(m).kind == "peft"]

    def allows(self, record: Experience) -> bool:
        if record.method not in self.allowed:
            return False
        if self.max_memory_mb is None:
            return True
        memory = measured_memory(record.metrics)
        return memory is not None and memory <= self.max_memory_mb

    def describe(self) -> str:
        parts = [
            "PEFT methods only" if self.peft_only else None,
            f"methods {', '.join(self.methods)}" if self.methods else None,
            f"peak memory ≤ {self.max_memory_mb:g} MB" if self.max_memory_mb else None,
        ]
        return "; ".join(p for p in parts if p) or "every method"


class _ScoreOnly(Selector):
    """Baselines predict a score per candidate, no intervals."""

    def _prediction(self, scores: np.ndarray) -> Prediction:
        mean = np.zeros((len(scores), 3))
        mean[:, 0] = scores
        return Prediction(mean, mean.copy(), mean.copy(), None)


class AlwaysMethod(_ScoreOnly):
    """What most users do today: one method at its defaults (LoRA), whatever the task (another of its settings
    where the defaults were not run)."""

    def __init__(self, method: str = "lora"):
        self.method = method

    def fit(self, records: list[Experience]) -> AlwaysMethod:
        return self

    def predict(self, profile: dict, candidates: list[Candidate]) -> Prediction:
        return self._prediction(
            np.array(
                [
                    (c.method == self.method)
                    + 0.5 * (c.method == self.method and at_defaults(c.method, c.hyperparameters))
                    for c in candidates
                ],
                float,
            )
        )


class GlobalBest(_ScoreOnly):
    """The method with the smallest mean gap to the best across past task instances, at its defaults."""

    def fit(self, records: list[Experience]) -> GlobalBest:
        self.gap = method_gaps(cells_of(records))
        return self

    def predict(self, profile: dict, candidates: list[Candidate]) -> Prediction:
        return self._prediction(
            np.array(
                [-self.gap.get(c.method, 1.0) + 1e-3 * at_defaults(c.method, c.hyperparameters) for c in candidates]
            )
        )


class RandomChoice(_ScoreOnly):
    """A configuration drawn at random (averaged over many draws by the evaluation)."""

    random = True  # its predictions are draws: the conformance check does not ask them to repeat

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
        return self._prediction(
            np.array([score[c.method] + 1e-3 * at_defaults(c.method, c.hyperparameters) for c in candidates])
        )


def select(
    pred: Prediction, candidates: list[Candidate], incumbents: Incumbents | None = None
) -> tuple[list[str], dict[str, int], np.ndarray]:
    """The same rule as ``MetaPEFT.recommend``: per method the candidate with the best cautious score (mean minus
    half an sd, weighed by its collapse risk where the prediction carries it), methods ranked by that candidate's
    expected accuracy, the incumbent first unless surely beaten (``rank_methods``; ``Incumbents.among``).
    Returns the ranking, the chosen candidate per method and each ranked method's probability of being best."""
    chosen = cautious_choice(pred, [c.method for c in candidates])
    ranking = rank_methods(pred, chosen, incumbents.among(candidates, chosen) if incumbents else None)
    return ranking, chosen, pred.take([chosen[m] for m in ranking]).best_probability()


def score_cell(
    pred: Prediction,
    candidates: list[Candidate],
    accuracy: np.ndarray,
    costs: np.ndarray | None = None,
    incumbents: Incumbents | None = None,
) -> dict:
    """Regret, top-1, NDCG, confidence and 90%-interval coverage of one ranking; ``costs`` (n × 2: train time s,
    peak memory MB, NaN where not measured comparably) adds the coverage of the time and memory intervals."""
    ranking, chosen, probs = select(pred, candidates, incumbents)
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
        "width": 100 * float(np.median(pred.high[:, 0] - pred.low[:, 0])),
        "runs": len(candidates),
        "picked": float(picked[0]),
        "pick": int(chosen[ranking[0]]),
    }
    if costs is not None:
        for j, key in ((1, "coverage_time"), (2, "coverage_memory")):
            seen = ~np.isnan(costs[:, j - 1])
            value = costs[seen, j - 1]
            out[key] = (
                float(((pred.low[seen, j] <= value) & (value <= pred.high[seen, j])).mean())
                if seen.any()
                else math.nan
            )
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


SELECTORS: dict[str, Callable[[], Selector]] = {
    "metapeft": Surrogate,
    "always_lora": AlwaysMethod,
    "always_full_ft": lambda: AlwaysMethod("full_finetuning"),
    "global_best": GlobalBest,
    "random": RandomChoice,
    "knn_profile": NearestNeighbours,
}


@dataclass
class _Instance:
    """One held-out task instance: its runs (one per configuration), the runs the constraint allows, and the
    references a user would run otherwise."""

    task: str
    name: str
    size: int
    runs: list[Experience]
    allowed: list[Experience]
    references: dict[str, float | None]
    lora_defaults: Experience | None


def _config_key(r: Experience) -> str:
    """A configuration, whatever the budget fields a run derived from its data (sequence length)."""
    return r.method + json.dumps(
        {k: v for k, v in r.hyperparameters.items() if k not in BUDGET_FIELDS}, sort_keys=True, default=str
    )


def _instances(held: str, runs: list[Experience], constraint: Constraint, min_methods: int) -> list[_Instance]:
    by_cell: dict[str, list[Experience]] = defaultdict(list)
    for r in runs:
        by_cell[cell_key(r)].append(r)
    out = []
    for cell in by_cell.values():
        by_config: dict[str, list[Experience]] = defaultdict(list)
        for r in sorted(cell, key=lambda r: (r.seed or 0, r.created_at)):
            by_config[_config_key(r)].append(r)
        first = [rs[0] for rs in by_config.values()]  # a configuration trained on two seeds: the first is scored
        allowed = [r for r in first if constraint.allows(r)]
        if len({r.method for r in allowed}) < min(min_methods, len(constraint.allowed)):
            continue
        lora = [r for r in first if r.method == "lora" and at_defaults(r.method, r.hyperparameters)]
        full = [r for r in first if r.method == "full_finetuning"]
        full_defaults = [r for r in full if at_defaults(r.method, r.hyperparameters)]
        references = {
            "lora_defaults": float(np.mean([r.metrics["accuracy"] for r in lora])) if lora else None,
            "full_finetuning": float(np.mean([r.metrics["accuracy"] for r in (full_defaults or full)]))
            if full
            else None,
            "median": float(np.median([r.metrics["accuracy"] for r in allowed])),
        }
        out.append(
            _Instance(held, first[0].task_name, _size(first[0]), first, allowed, references, lora[0] if lora else None)
        )
    return out


def _replicates(runs: list[Experience], constraint: Constraint) -> list[list[tuple[Experience, Experience]]]:
    """Per task instance trained on two seeds (the task at one size and step budget; the seed draws the training
    sample or, in benches that split them, only the initialisation and order): the allowed configurations run on
    both, as pairs (first seed, second seed)."""
    groups: dict[str, dict[str, dict[int, Experience]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        if constraint.allows(r):
            groups[f"{r.task_name}|{budget_key(r)}"][_config_key(r)].setdefault(r.seed or 0, r)
    out = []
    for configs in groups.values():
        seeds = sorted({s for by_seed in configs.values() for s in by_seed})
        if len(seeds) < 2:
            continue
        a, b = seeds[:2]
        pairs = [(by_seed[a], by_seed[b]) for by_seed in configs.values() if a in by_seed and b in by_seed]
        if len({x.method for x, _ in pairs}) >= 2:
            out.append(pairs)
    return out


def _size(r: Experience) -> int:
    return int(r.profile.get("dataset_size") or r.tags.get("n_train") or 0)


def evaluate(
    records: list[Experience],
    *,
    constraint: Constraint | None = None,
    selectors: dict[str, Callable[[], Selector]] | None = None,
    few_shot: int = 2,
    random_repeats: int = 50,
    min_methods: int = 5,
    progress: Callable[[int, int, str], None] | None = None,
    held_out: list[str] | None = None,
    steps: int | None = None,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict:
    """Leave-one-task-out over ``records`` (module docstring).

    Args:
        records: The experience (its usable runs are read; a task's runs on two training seeds are replicates).
        constraint: What the selection may choose from (default: every method). The selectors learn from every
            run; only the candidates of a held-out instance are constrained.
        selectors: Name → factory of a :class:`~metapeft.meta.Selector` (default: ``SELECTORS``: metapeft and
            the baselines).
        few_shot: Also measure conditioning on that many observed runs of the held-out instance (0 = skip).
        random_repeats: Draws averaged for the random baseline.
        min_methods: Instances with allowed runs of fewer methods (or of fewer than the constraint allows) are not
            scored (too small a choice), though their runs still train the selectors.
        progress: Called with (tasks done, tasks, task) as it goes.
        held_out: Limit the tasks held out (and scored) to these task groups (default: every task).
        steps: Score only the task instances trained for this many steps (default: every step budget); the
            selectors still learn from every run.
        bootstrap: Task resamples for the paired gains' intervals.
        seed: Seeds the resampling and the random baseline.

    Returns:
        A JSON-ready dict: per selector, regret figures, disaster rate and paired gains over each reference (all
        sizes and by size), and the ceiling: the same gains for the best allowed run in hindsight; cross-fitted regret
        where replicates exist; the winner's-curse offset; per-task regret; calibration and coverage of metapeft's
        intervals; few-shot conditioning.
    """
    from scipy.stats import wilcoxon

    constraint = constraint or Constraint()
    selectors = selectors or SELECTORS
    records = [r for r in {r.id: r for r in records}.values() if usable(r)]
    groups = sorted({task_group(r) for r in records})
    if len(groups) < 3:
        raise ValueError(f"leave-one-task-out needs runs on at least 3 tasks; the experience has {len(groups)}")
    if held_out is not None:
        groups = [g for g in groups if g in set(held_out)]
    if steps is not None and not any(r.hyperparameters.get("max_steps") == steps for r in records):
        budgets = sorted({r.hyperparameters.get("max_steps") for r in records} - {None})
        raise ValueError(f"no run was trained for {steps} steps (the experience has {budgets})")
    per_cell: dict[str, list[dict]] = defaultdict(list)
    crossed: dict[str, list[dict]] = defaultdict(list)
    curse: list[dict] = []
    few: list[dict] = []
    embedding_rho: list[float] = []
    for n, held in enumerate(groups):
        if progress:
            progress(n, len(groups), held)
        train = [r for r in records if task_group(r) != held]
        own = [r for r in records if task_group(r) == held]
        scored = [r for r in own if steps is None or r.hyperparameters.get("max_steps") == steps]
        instances = _instances(held, scored, constraint, min_methods)
        replicates = _replicates(scored, constraint)
        for inst in instances:
            curse.append({"task": held, **_winners_curse(inst.allowed, seed=len(curse))})
        past = cells_of(train)
        for name, make in selectors.items():
            model = make()
            if isinstance(model, AlwaysMethod) and model.method not in constraint.allowed:
                continue  # a baseline the constraint rules out
            model = model.fit(train)
            repeats = random_repeats if name == "random" else 1
            for inst in instances:
                runs = inst.allowed
                cands = [Candidate(r.method, r.hyperparameters) for r in runs]
                acc = np.array([r.metrics["accuracy"] for r in runs])
                costs = np.array(
                    [[measured_time(r) or math.nan, measured_memory(r.metrics) or math.nan] for r in runs],
                    dtype=float,
                )
                # the ranking rule reads the incumbent only with joint draws (not the baselines)
                incumbents = Incumbents.of(past, sorted({r.method for r in runs}), inst.size, examples_seen(runs[0]))
                cells = [
                    score_cell(model.predict(runs[0].profile, cands), cands, acc, costs, incumbents)
                    for _ in range(repeats)
                ]
                row = {
                    "task": held,
                    "cell": inst.name,
                    "size": inst.size,
                    **{k: float(np.mean([c[k] for c in cells])) for k in cells[0] if k != "pick"},
                    "references": inst.references,
                }
                if repeats == 1:
                    row["mcnemar"] = _mcnemar(runs[cells[0]["pick"]], inst.lora_defaults)
                per_cell[name].append(row)
                if name == "metapeft" and few_shot and len(runs) > few_shot + 1:
                    few.append({"size": inst.size, **_few_shot(model, runs, few_shot, seed=len(few))})
            for pairs in replicates:
                crossed[name].append(
                    {
                        "task": held,
                        "size": _size(pairs[0][0]),
                        **_cross_fitted(
                            model,
                            pairs,
                            Incumbents.of(
                                past,
                                sorted({a.method for a, _ in pairs}),
                                _size(pairs[0][0]),
                                examples_seen(pairs[0][0]),
                            ),
                            repeats,
                        ),
                    }
                )
            if name == "metapeft":
                embedding_rho += _embedding_agreement(
                    model.embedder, train, [r for inst in instances for r in inst.runs]
                )
    if progress:
        progress(len(groups), len(groups), "")
    if not per_cell:
        raise ValueError(
            f"no task instance has allowed runs of at least {min(min_methods, len(constraint.allowed))} methods "
            f"({constraint.describe()}" + (f", {steps} steps" if steps is not None else "") + ")"
        )
    rng = np.random.default_rng(seed)
    first = next(iter(per_cell.values()))
    out = {
        "constraint": constraint.describe(),
        "steps": steps,
        "tasks": len({r["task"] for r in first}),
        "cells": len(first),
        "runs": len(records),
        "sizes": sorted({r["size"] for r in first}),
        "selectors": {},
    }
    per_task = {name: _by_task(rows) for name, rows in per_cell.items()}
    # the best allowed run in hindsight: its gain over each reference is the ceiling of any selector's
    ceiling = [{**r, "picked": r["picked"] + r["regret"] / 100} for r in first]
    out["ceiling"] = {
        ref: {
            "all": _paired(ceiling, ref, None, rng, bootstrap, wilcoxon),
            **{str(size): _paired(ceiling, ref, size, rng, bootstrap, wilcoxon) for size in out["sizes"]},
        }
        for ref in REFERENCES
    }
    for name, rows in per_cell.items():
        tasks = per_task[name]
        summary = {
            "mean_regret": round(float(np.mean(list(tasks.values()))), 3),
            "worst_task_regret": round(float(max(tasks.values())), 3),
            "worst_cell_regret": round(float(max(r["regret"] for r in rows)), 3),
            "worst_cell": max(rows, key=lambda r: r["regret"])["cell"],
            "disaster_rate": round(float(np.mean([r["regret"] > DISASTER for r in rows])), 3),
            "regret_at_3": round(float(np.mean([r["regret_at_3"] for r in rows])), 3),
            "top1": round(float(np.mean([r["top1"] for r in rows])), 3),
            "ndcg": round(float(np.mean([r["ndcg"] for r in rows])), 3),
            "by_size": {str(size): _regret_summary([r for r in rows if r["size"] == size]) for size in out["sizes"]},
            "paired": {
                ref: {
                    "all": _paired(rows, ref, None, rng, bootstrap, wilcoxon),
                    **{str(size): _paired(rows, ref, size, rng, bootstrap, wilcoxon) for size in out["sizes"]},
                }
                for ref in REFERENCES
            },
        }
        tests = [r["mcnemar"] for r in rows if r.get("mcnemar")]
        if tests:
            summary["mcnemar_vs_lora_defaults"] = {
                "cells": len(tests),
                "better": int(sum(t["p"] < 0.05 and t["gain"] > 0 for t in tests)),
                "worse": int(sum(t["p"] < 0.05 and t["gain"] < 0 for t in tests)),
            }
        if crossed.get(name):
            summary["cross_fitted_regret"] = round(
                float(np.mean(list(_by_task(crossed[name], "cross_fitted").values()))), 3
            )
            summary["cross_fitted_gain_over_lora_defaults"] = _task_means_by_size(crossed[name], "gain_lora")
        if name == "metapeft":
            summary["embedding_spearman"] = round(float(np.nanmean(embedding_rho)), 3) if embedding_rho else None
            summary["ece"] = round(
                expected_calibration_error([r["confidence"] for r in rows], [r["best_share"] for r in rows]), 3
            )
            summary["ece_ties_as_wins"] = round(
                expected_calibration_error([r["confidence"] for r in rows], [r["top1"] for r in rows]), 3
            )
            summary.update(_intervals(rows))
            summary["intervals_by_size"] = {  # the targets are per size: a wide 64-example interval is not a 1,024's
                str(size): _intervals(at) for size in out["sizes"] if (at := [r for r in rows if r["size"] == size])
            }
            for key in ("time", "memory"):  # cells without a comparable measurement are left out
                values = [r[f"coverage_{key}"] for r in rows if not math.isnan(r[f"coverage_{key}"])]
                summary[f"coverage_90_{key}"] = round(float(np.mean(values)), 3) if values else None
        out["selectors"][name] = summary
    any_crossed = next(iter(crossed.values()), [])
    out["replicates"] = {
        "cells": len(any_crossed),
        "tasks": len({c["task"] for c in any_crossed}),
        "other_seed_winner_regret": round(float(np.mean([c["other_seed_winner"] for c in any_crossed])), 3)
        if any_crossed
        else None,
        # the paired gain's ceiling without the winner's curse: the best configuration chosen on the other seed
        "other_seed_winner_gain_over_lora_defaults": _task_means_by_size(any_crossed, "other_seed_winner_gain_lora"),
    }
    out["winners_curse"] = {
        "mean_regret": round(float(np.mean(list(_by_task(curse).values()))), 3),
        "top1": round(float(np.mean([f["top1"] for f in curse])), 3),
    }
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

        def mean_of(rows: list[dict]) -> dict:
            return {
                "cells": len(rows),
                **{k: round(float(np.mean([f[k] for f in rows])), 4) for k in rows[0] if k != "size"},
            }

        out["few_shot"] = {
            "observed_runs": few_shot,
            **mean_of(few),
            "by_size": {
                str(size): mean_of([f for f in few if f["size"] == size]) for size in sorted({f["size"] for f in few})
            },
        }
    return out


def _regret_summary(rows: list[dict]) -> dict:
    if not rows:
        return {"cells": 0}
    tasks = _by_task(rows)
    return {
        "cells": len(rows),
        "tasks": len(tasks),
        "mean_regret": round(float(np.mean(list(tasks.values()))), 3),
        "disaster_rate": round(float(np.mean([r["regret"] > DISASTER for r in rows])), 3),
        "worst_cell_regret": round(float(max(r["regret"] for r in rows)), 3),
    }


def _paired(rows: list[dict], reference: str, size: int | None, rng, bootstrap: int, wilcoxon) -> dict:
    """The pick's gain over ``reference`` (points), averaged per task over its instances that have the reference:
    mean over tasks, 90% task-bootstrap interval, one-sided Wilcoxon p (gain > 0), share of tasks won (a tie counts
    half) and the worst task."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        ref = r["references"].get(reference)
        if ref is not None and (size is None or r["size"] == size):
            by[r["task"]].append(100 * (r["picked"] - ref))
    if not by:
        return {"tasks": 0}
    gains = np.array([np.mean(v) for v in by.values()])
    means = gains[rng.integers(0, len(gains), size=(bootstrap, len(gains)))].mean(1)
    nonzero = gains[np.abs(gains) > 1e-9]
    p = float(wilcoxon(nonzero, alternative="greater").pvalue) if len(nonzero) else 1.0
    return {
        "tasks": len(gains),
        "cells": sum(len(v) for v in by.values()),
        "mean_gain": round(float(gains.mean()), 3),
        "interval_90": [round(float(np.percentile(means, 5)), 3), round(float(np.percentile(means, 95)), 3)],
        "wilcoxon_p": round(p, 4),
        "win_rate": round(float(np.mean((gains > 1e-9) + 0.5 * (np.abs(gains) <= 1e-9))), 3),
        "worst_task_gain": round(float(gains.min()), 3),
    }


def _mcnemar(picked: Experience, reference: Experience | None) -> dict | None:
    """Exact McNemar test between the pick and a reference run scored on the same rows (per-example outcomes)."""
    if reference is None or picked.id == reference.id:
        return None
    correct = paired_outcomes([picked, reference])
    if correct is None:
        return None
    from scipy.stats import binomtest

    x, y = correct
    only_pick, only_ref = int((x & ~y).sum()), int((~x & y).sum())
    p = float(binomtest(only_pick, only_pick + only_ref, 0.5).pvalue) if only_pick + only_ref else 1.0
    return {"gain": 100 * float(x.mean() - y.mean()), "p": p}


def _cross_fitted(
    model: Selector, pairs: list[tuple[Experience, Experience]], incumbents: Incumbents | None, repeats: int
) -> dict:
    """On an instance trained on two seeds (``pairs``: one configuration's two runs): the pick scored on seed B
    against the configuration best on seed A (and the reverse); beside it, the plain regret of copying seed A's
    winner (best on B minus B's accuracy of A's winner). Where LoRA at its defaults is among the pairs, also the
    gains over it on seed B of the pick and of seed A's winner: the latter is the ceiling of the paired gain without
    the winner's curse (the best configuration in hindsight is chosen on one seed and scored on the other)."""
    cands = [Candidate(a.method, a.hyperparameters) for a, _ in pairs]
    acc = np.array([[a.metrics["accuracy"], b.metrics["accuracy"]] for a, b in pairs])
    lora = next(
        (i for i, (a, _) in enumerate(pairs) if a.method == "lora" and at_defaults(a.method, a.hyperparameters)), None
    )
    regrets, copy, gains, ceiling = [], [], [], []
    for _ in range(repeats):
        pred = model.predict(pairs[0][0].profile, cands)
        ranking, chosen, _ = select(pred, cands, incumbents)
        pick = chosen[ranking[0]]
        for fit_on, score_on in ((0, 1), (1, 0)):
            # Configurations tied on seed A (DoRA and LoRA at their defaults often score the same) are each as
            # likely to be A's winner: B's accuracy of the winner is their mean.
            reference = float(acc[acc[:, fit_on] == acc[:, fit_on].max(), score_on].mean())
            regrets.append(100 * (reference - acc[pick, score_on]))
            copy.append(100 * (acc[:, score_on].max() - reference))
            if lora is not None:
                gains.append(100 * (acc[pick, score_on] - acc[lora, score_on]))
                ceiling.append(100 * (reference - acc[lora, score_on]))
    return {
        "cross_fitted": float(np.mean(regrets)),
        "other_seed_winner": float(np.mean(copy)),
        "gain_lora": float(np.mean(gains)) if gains else None,
        "other_seed_winner_gain_lora": float(np.mean(ceiling)) if ceiling else None,
    }


def _winners_curse(runs: list[Experience], seed: int, draws: int = 2000) -> dict:
    """The winner's-curse offset of one instance: regret and top-1 of a selector that knows every run's true
    accuracy, caused by the test set's sampling noise alone (the recorded accuracies stand for the truth, each is
    re-measured on as many test examples, binomial noise, and the truly best is scored against the re-measured best).
    Not a lower bound on regret: runs scored on the same rows are not independent, training-seed noise is left out,
    and recorded accuracies spread wider than the truth."""
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
    return {
        "regret": 100 * float((best - measured[:, truth]).mean()),
        "top1": float((method_best >= best - 1e-9).mean()),
    }


def _intervals(rows: list[dict]) -> dict[str, float]:
    """The 90% accuracy intervals' mean coverage and median width (points) over scored cells."""
    return {
        "coverage_90": round(float(np.mean([r["coverage"] for r in rows])), 3),
        "interval_width_90_median": round(float(np.median([r["width"] for r in rows])), 1),
    }


def _task_means_by_size(rows: list[dict], key: str) -> dict[str, dict[str, float | int]]:
    """The mean over tasks of ``key`` (each task's mean over its instances; rows without it left out), over all
    sizes and by size: ``{"all": {"mean": m, "tasks": n}, "1024": {...}}``."""
    out = {}
    for size in [None, *sorted({r["size"] for r in rows})]:
        kept = [r for r in rows if r.get(key) is not None and (size is None or r["size"] == size)]
        if kept:
            tasks = _by_task(kept, key)
            out["all" if size is None else str(size)] = {
                "mean": round(float(np.mean(list(tasks.values()))), 3),
                "tasks": len(tasks),
            }
    return out


def _by_task(rows: list[dict], key: str = "regret") -> dict[str, float]:
    by = defaultdict(list)
    for r in rows:
        by[r["task"]].append(r[key])
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
        keep = valid[i, len(new) :]
        if keep.sum() >= 3:
            d = np.linalg.norm(z[len(new) :] - z[i], axis=1)
            out.append(float(spearmanr(d[keep], dist[i, len(new) :][keep]).statistic))
    return out


def _few_shot(model: Surrogate, runs: list[Experience], k: int, seed: int) -> dict:
    """Observe ``k`` random runs of a task instance, predict the others: accuracy error, interval coverage and the
    intervals' median width (points) with and without conditioning on the observed runs."""
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
        "width_zero_shot": 100 * float(np.median(cold.high[:, 0] - cold.low[:, 0])),
        "width_conditioned": 100 * float(np.median(warm.high[:, 0] - warm.low[:, 0])),
    }
