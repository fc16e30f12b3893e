"""``MetaPEFT``: recommend a PEFT method and its settings for a task from the experience, and learn from new runs.

Data flows one way: task → profile → embedding → surrogate prediction → ranking. Fitted models are cached in the
data directory (safetensors plus JSON, never pickle), keyed by the experience they were fitted on; when runs
arrive the cached models are updated in place (``partial_fit``) rather than refitted, and refitted from scratch
once the experience has grown by a quarter since the last full fit.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._config import data_dir
from .._environment import machine_key, same_host
from .._errors import MetapeftError
from ..experience import Experience, ExperienceStore, examples_fed, fingerprint_of, like_budget, task_group, usable
from ..methods import BUDGET_FIELDS, get_method, list_methods
from ..tasks import Task, TaskProfile
from ._embedding import Cell, cells_of, method_gaps
from ._features import TARGETS, _scale, at_defaults, budgeted, effective_max_length, profile_dict
from ._forecast import CurveForecaster
from ._risk import CollapseRisk
from ._surrogate import CAUTION, Candidate, Prediction, Surrogate

CACHE_VERSION = 7
PACKAGED_MODEL = Path(__file__).resolve().parent.parent / "prior" / "surrogate.safetensors"
REFIT_GROWTH = 0.25
MIN_VARIED = 10
SURE = 0.7  # how often, over the surrogate's joint draws, a method must beat the incumbent to be ranked above it


@dataclass
class MethodRecommendation:
    """One method in the ranking: the seed design's record plus its rank and whether it fits the user's limits."""

    method: str
    rank: int
    confidence: float  # probability that this method (with these settings) is the best of the ranking
    hyperparameters: dict[str, Any]
    expected_performance: dict[
        str, dict[str, float]
    ]  # accuracy / train_time_s / peak_memory_mb → mean, low, high (90%)
    reasoning: str
    feasible: bool = True
    collapse_risk: float | None = None  # probability that these settings fail on the task (see meta._risk)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SettingCheck:
    """What ``MetaPEFT.check`` says of a user's setting: its collapse risk (``verdict``: low under 15%, high from
    35%), beside the experience's base rate of failure, its expected accuracy (90% interval), up to three changes
    that lower the risk without lowering the expected accuracy (``kind``: one setting, the defaults, or the setting
    ``recommend`` suggests for this method), the past runs nearest it (``evidence``), and ``notes`` where the
    setting lies outside what the experience measured (the figures there are extrapolated)."""

    task: str
    method: str
    hyperparameters: dict[str, Any]
    collapse_risk: float
    verdict: str
    base_rate: float
    expected_accuracy: dict[str, float]
    suggestions: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SimilarTask:
    task: str
    distance: float
    best_method: str
    best_accuracy: float
    scores: dict[str, float] = field(default_factory=dict)


class MetaPEFT:
    """The meta-learner over the experience: the shipped prior plus your own runs.

    >>> meta = MetaPEFT()
    >>> ranking = meta.recommend(load_task("example"))   # doctest: +SKIP
    >>> ranking[0].method, ranking[0].confidence, ranking[0].hyperparameters   # doctest: +SKIP
    """

    def __init__(
        self,
        store: ExperienceStore | str | None = None,
        *,
        include_prior: bool | None = None,
        include_own: bool = True,
        model: str | None = None,
        cache_dir: str | Path | None = None,
        surrogate: Surrogate | None = None,
        experiences: list[Experience] | None = None,
    ):
        self.store = store if isinstance(store, ExperienceStore) or store is None else ExperienceStore(store)
        self.include_prior, self.include_own = include_prior, include_own
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else data_dir() / "meta"
        self.surrogate = surrogate
        # ``experiences`` replaces the store and prior as what the models learn from (e.g. leave-one-task-out)
        self._records: list[Experience] | None = (
            [r for r in experiences if usable(r)] if experiences is not None else None
        )
        self._given = experiences is not None
        self._cells: list[Cell] | None = None
        self._cell_z: np.ndarray | None = None
        self._derived: dict[
            str, Any
        ] = {}  # facts of the experience that every recommendation reads; cleared with _cells
        self._candidates: dict[tuple, list[dict]] = {}
        self._built: dict[tuple[str, str], list[dict]] = {}

    # --- experience and models -----------------------------------------------------------------------------
    def experiences(self) -> list[Experience]:
        if self._records is None:
            from ..prior import experiences

            own = self._own_store() if self.include_own else None
            records = experiences(own, include_prior=self.include_prior, include_own=self.include_own)
            self._records = [r for r in records if usable(r)]
        return self._records

    def _own_store(self) -> ExperienceStore:
        if self.store is None:
            self.store = ExperienceStore()
        return self.store

    @property
    def own_store(self) -> ExperienceStore:
        """The user's experience store (where new runs and predictions go)."""
        return self._own_store()

    def fit(self, *, force: bool = False, progress=None) -> MetaPEFT:
        """Fit (or load from the cache, or update) the surrogate and its task embedding on the experience."""
        records = self.experiences()
        if len({task_group(r) for r in records}) < 2:
            raise MetapeftError(
                f"not enough experience to learn from: {len(records)} finished runs on fewer than 2 tasks "
                "(is the prior switched off? run `metapeft train` or `metapeft bench`, or drop --no-prior or "
                "METAPEFT_PRIOR=0)"
            )
        if max(len(c.scores) for c in cells_of(records)) < 3:
            raise MetapeftError(
                f"not enough experience to learn from: no task in the {len(records)} finished runs has runs of 3 or "
                "more methods (at the same size and step budget) to compare; run more methods on one task "
                "(`metapeft bench`), or drop --no-prior or METAPEFT_PRIOR=0"
            )
        if self._given:  # an explicit experience list (e.g. leave-one-task-out) is fitted in memory, never cached
            if progress:
                progress(f"fitting the meta-learner on {len(records)} runs")
            self.surrogate = Surrogate().fit(records)
            self._cells = None
            self._derived.clear()
            return self
        from ..prior import prior_enabled

        key = _experience_key(records)
        ids = sorted(r.id for r in records)
        # one cache per choice of experience (store, prior on/off), so that switching the prior off and on does not
        # make each choice overwrite the other's models
        selection = (
            f"{self.store.url if self.store is not None else ''}|"
            f"{prior_enabled(self.include_prior)}|{self.include_own}"
        )
        path = self.cache_dir / f"surrogate-{hashlib.sha256(selection.encode()).hexdigest()[:12]}.safetensors"
        cached = (
            None if force else (_load_cached(path) or _load_cached(PACKAGED_MODEL))
        )  # the shipped fit on the prior
        known = set(cached[1]["ids"]) if cached is not None else set()
        if cached is not None and cached[1]["key"] == key:
            self.surrogate = cached[0]
        elif (
            cached is not None
            and known <= set(ids)
            and len(ids) < cached[1]["full_fit_records"] * (1 + REFIT_GROWTH)
            and cached[0].covers([r for r in records if r.id not in known])
        ):
            self.surrogate = cached[0].partial_fit(records)  # a few new runs: continue training, keep calibration
            _save(path, self.surrogate, key, cached[1]["full_fit_records"], ids)
        else:
            if progress:
                progress(f"fitting the meta-learner on {len(records)} runs")
            self.surrogate = Surrogate().fit(records)
            _save(path, self.surrogate, key, len(records), ids)
        self._cells = None
        self._derived.clear()
        return self

    def save(self, folder: str | Path) -> Path:
        """Write the fitted selector (fitting it first if needed) as two files that :meth:`load` reads back
        without refitting: ``surrogate.safetensors`` and ``experience.jsonl.gz`` (its experience, gzip without a
        timestamp, so the same selector gives the same bytes).

        Args:
            folder: The folder to write (created if missing).

        Returns:
            ``folder``.
        """
        import gzip

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        records = self.experiences()
        _save(
            folder / "surrogate.safetensors",
            self._fitted(),
            _experience_key(records),
            len(records),
            sorted(r.id for r in records),
        )
        with open(folder / "experience.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(
                "".join(json.dumps(r.as_dict(), default=str, separators=(",", ":")) + "\n" for r in records).encode(
                    "utf-8"
                )
            )
        return folder

    @classmethod
    def load(cls, folder: str | Path, surrogate: str | Path | None = None) -> MetaPEFT:
        """A selector that :meth:`save` wrote (nothing is refitted).

        Args:
            folder: The folder of ``surrogate.safetensors`` and ``experience.jsonl.gz``, or the experience file.
            surrogate: The surrogate file, when ``folder`` is the experience file.

        Raises:
            MetapeftError: A file is missing or not a selector this version reads.
        """
        import gzip

        folder = Path(folder)
        experience, surrogate = (
            (folder, Path(surrogate))
            if surrogate
            else (folder / "experience.jsonl.gz", folder / "surrogate.safetensors")
        )
        loaded = _load_cached(surrogate)
        if loaded is None or not experience.is_file():
            raise MetapeftError(
                f"{folder} holds no selector this metapeft version reads (surrogate.safetensors and "
                "experience.jsonl.gz); write one with `metapeft fit`"
            )
        with gzip.open(experience, "rt", encoding="utf-8") as f:
            records = [Experience.from_dict(json.loads(line)) for line in f if line.strip()]
        return cls(experiences=records, surrogate=loaded[0])

    def _fitted(self) -> Surrogate:
        if self.surrogate is None:
            self.fit()
        if self.surrogate.risk is None:  # a surrogate saved without its collapse-risk model (an older cache)
            self.surrogate.risk = CollapseRisk().fit(self.experiences())
        return self.surrogate

    def learn_from_experience(self, experience: Experience) -> None:
        """Record a finished run in your store and update the models with it."""
        if experience.status == "finished":
            self._own_store().add_many(
                [experience], skip_existing=True
            )  # runs made by train() or tune() are stored already
        if self._records is not None and usable(experience):
            self._records = [r for r in self._records if r.id != experience.id] + [experience]
        self._candidates.clear()  # the settings tried per method may have grown
        self._built.clear()
        self.fit()

    # --- profiles ------------------------------------------------------------------------------------------
    def profile(self, task: Task | TaskProfile | dict | str) -> dict:
        """The task's profile, cached by dataset fingerprint and model (profiling loads the encoder)."""
        if isinstance(task, (TaskProfile, dict)):
            return profile_dict(task)
        from ..tasks import cached_profile, load_task

        if isinstance(task, (str, Path)):
            task = load_task(str(task))
        return cached_profile(task, self.model).as_dict()

    # --- similar tasks -------------------------------------------------------------------------------------
    def cells(self) -> tuple[list[Cell], np.ndarray]:
        surrogate = self._fitted()
        if self._cells is None:  # both set together: a server's threads read them
            cells = cells_of(self.experiences())
            self._cell_z, self._cells = surrogate.embedder.predict([c.profile for c in cells]), cells
        return self._cells, self._cell_z

    def similar(self, task, k: int = 5) -> list[SimilarTask]:
        """The nearest past task instances in the learned embedding (one per task, its nearest size), other tasks
        than this one: when the task itself is in the experience, its other sizes and samples are left out too."""
        profile = self.profile(task)
        cells, zs = self.cells()
        z = self._fitted().embedder.predict([profile])[0]
        dist = np.linalg.norm(zs - z, axis=1)
        out, seen = [], {c.group for c in cells if c.fingerprint == profile.get("fingerprint")}
        for i in np.argsort(dist):
            c = cells[i]
            if c.group in seen:
                continue
            seen.add(c.group)
            out.append(
                SimilarTask(
                    c.task,
                    round(float(dist[i]), 3),
                    c.best_method,
                    round(c.best_accuracy, 4),
                    {m: round(s, 4) for m, s in sorted(c.scores.items(), key=lambda x: -x[1])},
                )
            )
            if len(out) == k:
                break
        return out

    # --- recommendation ------------------------------------------------------------------------------------
    def candidates(self, method: str, n: int = 24, seed: int = 0, seen: float | None = None) -> list[dict]:
        """Settings to score for a method: its defaults, every setting the experience has tried for it, and — once
        the experience has tried at least ``MIN_VARIED`` settings, so that the surrogate has seen settings vary —
        a random design over its search space (Optuna's RandomSampler). Batch size, steps and sequence length
        are left out: they are the user's budget, not a choice.

        Given ``seen``, the training examples the user's budget feeds (steps × batch size), only the experience at a
        like budget counts (``experience.like_budget``): where settings were never varied at
        such a budget (the experience's 320-step runs are all at the defaults), the surrogate would carry the
        settings' effects over from shorter runs, which rank how fast a setting learns rather than where it ends, so
        the defaults, the settings measured there, are all that is scored."""
        key = (method, seen)
        if key not in self._candidates:
            spec = get_method(method)
            space = {k: v for k, v in spec.search_space().items() if k not in BUDGET_FIELDS}
            tried = {
                json.dumps({k: v for k, v in r.hyperparameters.items() if k in space}, sort_keys=True)
                for r in self.experiences()
                if r.method == method and (seen is None or like_budget(r, seen))
            }
            settings = [{}] + [json.loads(s) for s in sorted(tried)]
            if len(tried) >= MIN_VARIED:
                import optuna

                optuna.logging.set_verbosity(optuna.logging.WARNING)
                study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    settings += [study.ask(space).params for _ in range(n)]
            self._candidates[key] = settings
        return self._candidates[key]

    def _configs(self, method: str, budget: dict[str, Any]) -> list[dict]:
        """The method's candidates at the budget's like (``candidates``) as full, validated settings under ``budget``
        (kept: building them was a third of a warm call)."""
        key = (method, json.dumps(budget, sort_keys=True, default=str))
        if key not in self._built:
            seen = examples_fed(budget)
            self._built[key] = [
                get_method(method).make_config({**params, **budget}).as_dict()
                for params in self.candidates(method, seen=seen)
            ]
        return self._built[key]

    def recommend(
        self,
        task,
        *,
        max_memory_mb: float | None = None,
        max_time_s: float | None = None,
        methods: list[str] | None = None,
        budget: dict[str, Any] | None = None,
        observed: list[Experience] | None = None,
        similar_k: int = 5,
        machine: str | None = None,
    ) -> list[MethodRecommendation]:
        """Rank methods for ``task`` (a Task, a profile, or a path): confidence that each is the best, expected
        accuracy / train time / peak memory with 90% intervals, suggested settings and the reasons.

        ``budget`` fixes shared settings such as ``max_steps`` for every candidate; ``observed`` are runs of this
        task (by default: your store's finished runs with the task's fingerprint) to condition the prediction on;
        ``machine`` is the key (``machine_key``) of the machine whose train times to predict: the experience's runs
        on it, of any task, scale the times (``machine_speed``); ``None``: the times of the experience's machines."""
        profile = self.profile(task)
        surrogate = self._fitted()
        names = methods or [m.name for m in list_methods() if m.name in surrogate.encoder.methods]
        for name in names:
            get_method(name)
        if observed is None:
            observed = self._by_fingerprint().get(profile.get("fingerprint"), [])
        budget = {k: v for k, v in (budget or {}).items() if k != "max_steps" or v}
        # the steps training will make (its default: ~5 epochs, 80..320 steps): the suggested settings say them
        budget["max_steps"] = budgeted(budget, profile)["max_steps"]

        rows = [(name, hp) for name in names for hp in self._configs(name, budget)]
        candidates = [Candidate(m, hp) for m, hp in rows]
        pred = surrogate.predict(profile, candidates, observed=observed, machine=self._on_machine(machine))
        feasible = np.ones(len(rows), bool)
        if max_memory_mb is not None:
            feasible &= pred.mean[:, 2] <= max_memory_mb
        if max_time_s is not None:
            feasible &= pred.mean[:, 1] <= max_time_s

        chosen = cautious_choice(pred, [m for m, _ in rows], feasible)
        blocked: dict[str, str] = {}
        for name in names:
            if name not in chosen:  # nothing within the limits: show the setting that comes closest
                chosen[name] = min(
                    (i for i, (m, _) in enumerate(rows) if m == name), key=lambda i: (pred.mean[i, 2], pred.mean[i, 1])
                )
                blocked[name] = _why_blocked(pred, chosen[name], max_memory_mb, max_time_s)

        live = [n for n in names if n not in blocked]
        probs = dict.fromkeys(names, 0.0)
        if live:
            probs.update(zip(live, _rounded_to_one(pred.take([chosen[n] for n in live]).best_probability())))
        similar = self.similar(profile, similar_k)
        cells = self.cells()[0]
        seen = examples_fed(budget)
        key = ("incumbent", tuple(names), profile.get("dataset_size"), seen)
        if key not in self._derived:
            self._derived[key] = Incumbents.of(cells, names, profile.get("dataset_size"), seen)
        incumbents, defaults = self._derived[key], compares_defaults(candidates, {n: chosen[n] for n in live})
        incumbent = incumbents.incumbent(defaults)
        order = rank_methods(pred, {n: chosen[n] for n in live}, incumbent) + sorted(
            blocked, key=lambda n: -pred.mean[chosen[n], 0]
        )
        # the runs the prediction was conditioned on: this task's, at a like step budget (Surrogate.predict)
        own = [r for r in observed if usable(r)]
        context = self._task_context(profile, [r for r in own if like_budget(r, seen)])
        context["other_budget"] = len(own) - context["observed"]
        context["seen"] = seen
        context["unvaried"] = {n for n in names if all(at_defaults(n, c) for c in self._configs(n, budget))}
        expected = pred.expected_accuracy()
        rival = max(live, key=lambda n: expected[chosen[n]]) if live else None
        if rival is not None and order[0] == incumbent != rival:  # the rule kept the incumbent first: say why
            beats = beat_rate(pred, chosen[rival], chosen[incumbent])
            lead = 100 * (expected[chosen[rival]] - expected[chosen[incumbent]])
            context["kept_first"] = (rival, lead, beats, incumbents.gaps(defaults)[incumbent], defaults)
        risks = {n: pred.fail[chosen[n]] for n in order}
        out = []
        for rank, name in enumerate(order, 1):
            i = chosen[name]
            expected = {
                t: {
                    "mean": _round(t, pred.mean[i, j]),
                    "low": _round(t, pred.low[i, j]),
                    "high": _round(t, pred.high[i, j]),
                }
                for j, t in enumerate(TARGETS)
            }
            out.append(
                MethodRecommendation(
                    method=name,
                    rank=rank,
                    confidence=probs[name],
                    hyperparameters=dict(rows[i][1]),
                    expected_performance=expected,
                    reasoning=_reasoning(name, rank, expected, similar, context, blocked.get(name), rows[i][1])
                    + " Collapse risk of these settings (accuracy near chance, or over 10 points below the best run): "
                    f"{risks[name]:.0%}.",
                    feasible=name not in blocked,
                    collapse_risk=round(float(risks[name]), 3),
                )
            )
        return out

    def check(self, task, method: str, hyperparameters: dict[str, Any] | None = None) -> SettingCheck:
        """How risky a user's own setting of ``method`` is on ``task`` and what to change: its collapse risk and
        expected accuracy, and the single-setting changes (each searched setting over its range, the defaults, the
        setting ``recommend`` suggests) that lower the risk most without lowering the expected accuracy. As in
        ``recommend``, the expected accuracy is conditioned on the experience's runs of this task at a like budget.

        Args:
            task: A Task, a profile, or a path.
            method: A method of the zoo.
            hyperparameters: The user's settings (validated; the rest are the method's defaults).

        Returns:
            A :class:`SettingCheck`.
        """
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        spec = get_method(method)
        user = spec.make_config(hyperparameters or {}).as_dict()  # a value outside the method's range is refused here
        profile = self.profile(task)
        budget = {k: user[k] for k in BUDGET_FIELDS if k in (hyperparameters or {})}
        options: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (change, full settings)
        for name, dist in spec.search_space().items():
            if name in BUDGET_FIELDS:
                continue
            if isinstance(dist, CategoricalDistribution):
                values = list(dist.choices)
            elif isinstance(dist, FloatDistribution):
                values = list(
                    np.geomspace(dist.low, dist.high, 7) if dist.log else np.linspace(dist.low, dist.high, 7)
                )
            elif isinstance(dist, IntDistribution):
                values = sorted(
                    {
                        int(round(v))
                        for v in (
                            np.geomspace(dist.low, dist.high, 5) if dist.log else np.linspace(dist.low, dist.high, 5)
                        )
                    }
                )
            else:
                continue
            for value in values:
                value = float(f"{value:.2g}") if isinstance(value, float) else value
                if value == user.get(name):
                    continue
                try:  # a change can break a rule between settings (AdaLoRA's target rank above its initial one)
                    options.append(
                        ({name: value}, spec.make_config({**(hyperparameters or {}), name: value}).as_dict())
                    )
                except MetapeftError:
                    continue
        options.append(({"defaults": True}, spec.make_config(budget).as_dict()))
        suggested = self.recommend(profile, methods=[method], budget=budget or None)[0].hyperparameters
        if not at_defaults(method, suggested):  # at a budget where settings were never varied it is the defaults
            options.append(({"suggested": True}, suggested))
        configs = [user] + [full for _, full in options]
        observed = self._by_fingerprint().get(profile.get("fingerprint"), [])  # as recommend: this task's runs
        pred = self._fitted().predict(profile, [Candidate(method, c) for c in configs], observed=observed)
        risks, accuracy = pred.fail, pred.mean[:, 0]  # the surrogate's predictions carry each setting's risk
        better = [
            i for i in range(1, len(configs)) if risks[i] < risks[0] - 0.05 and accuracy[i] >= accuracy[0] - 0.01
        ]
        better.sort(key=lambda i: (round(float(risks[i]), 2), -accuracy[i]))
        suggestions, seen = [], set()
        for i in better:
            change = options[i - 1][0]
            key = next(iter(change))
            if key in seen:
                continue
            seen.add(key)
            shown = (
                {k: v for k, v in configs[i].items() if user.get(k) != v}
                if key in ("defaults", "suggested")
                else change
            )
            suggestions.append(
                {
                    "change": shown,
                    "kind": key if key in ("defaults", "suggested") else "setting",
                    "collapse_risk": round(float(risks[i]), 3),
                    "expected_accuracy": round(float(accuracy[i]), 4),
                }
            )
            if len(suggestions) == 3:
                break
        risk = float(risks[0])
        return SettingCheck(
            task=profile.get("task_name", ""),
            method=method,
            # as training will run them: the step budget and tokens per example resolved from the task
            hyperparameters={**budgeted(user, profile), "max_length": effective_max_length(user, profile)},
            collapse_risk=round(risk, 3),
            verdict="low" if risk < 0.15 else "moderate" if risk < 0.35 else "high",
            base_rate=round(float(self.collapse_risk().base_rate), 3),
            expected_accuracy={
                "mean": round(float(accuracy[0]), 4),
                "low": round(float(pred.low[0, 0]), 4),
                "high": round(float(pred.high[0, 0]), 4),
            },
            suggestions=suggestions,
            evidence=self._evidence(profile, method, user, set(hyperparameters or {})),
            notes=self._unmeasured(profile, method, user, set(hyperparameters or {})),
        )

    def _unmeasured(self, profile: dict, method: str, user: dict[str, Any], chosen: set[str]) -> list[str]:
        """Where the ``user``'s setting lies outside what the experience measured for ``method``: a numeric setting
        among those ``chosen`` (set, not left at their defaults) beyond the values its past runs tried; a step budget
        at which the experience never ran the method (none at a like budget, ``experience.like_budget``); or settings
        other than the defaults at a budget where it ran the method only at its defaults. The risk and expected
        accuracy there are the models' extrapolation: a low risk is then an absence of evidence, not evidence of
        safety."""
        from optuna.distributions import FloatDistribution, IntDistribution

        def shown(v: float) -> str:
            return f"{v:.2g}" if isinstance(v, float) else str(v)

        space = get_method(method).search_space()
        runs = [r for r in self.experiences() if r.method == method]
        notes = []
        for name in sorted(chosen):
            if name in BUDGET_FIELDS or not isinstance(space.get(name), (FloatDistribution, IntDistribution)):
                continue
            tried = [r.hyperparameters[name] for r in runs if isinstance(r.hyperparameters.get(name), (int, float))]
            value = user[name]
            if tried and not min(tried) <= value <= max(tried):
                side, edge = (
                    ("above", f"highest {shown(max(tried))}")
                    if value > max(tried)
                    else ("below", f"lowest {shown(min(tried))}")
                )
                notes.append(
                    f"{name}={shown(value)} lies {side} every {method} run in the experience ({edge}): its risk and "
                    "expected accuracy are extrapolated, not measured"
                )
        budget = budgeted(user, profile)
        seen = examples_fed(budget)
        like = [r for r in runs if like_budget(r, seen)]
        if not like:
            notes.append(
                f"the experience never ran {method} at a step budget like this one ({seen:g} training examples fed): "
                "its risk and expected accuracy are carried over from runs at other budgets"
            )
        elif not at_defaults(method, user) and all(at_defaults(method, r.hyperparameters) for r in like):
            notes.append(
                f"the experience ran {method} at a step budget like this one ({seen:g} training examples fed) only at "
                "its defaults: the risk and expected accuracy of other settings are carried over from runs at other "
                "budgets"
            )
        return notes

    def _evidence(
        self, profile: dict, method: str, user: dict[str, Any], chosen: set[str], k: int = 3
    ) -> list[dict[str, Any]]:
        """The past runs of ``method`` nearest the ``user``'s setting: on the task's own data first (runs in the store
        with its fingerprint), then on each of the ``k`` task instances most like it (``similar``), the run whose
        settings lie closest — first in the settings the user ``chosen`` (set rather than left at their defaults),
        then in the others, then in the step budget; a setting's difference is a share of its searched range, on a
        log scale where it is searched on one. Each with the settings that differ from the user's, its accuracy, the
        task's chance level and whether it failed (``meta._risk``: near chance, or over 10 points below the best
        run of its instance): the runs the risk model generalises from, for the user to weigh."""
        from optuna.distributions import CategoricalDistribution

        from ._risk import chance_accuracy, failures

        space = {n: d for n, d in get_method(method).search_space().items() if n not in BUDGET_FIELDS}
        steps = budgeted(user, profile)["max_steps"]

        def distance(r: Experience) -> tuple[float, float, float]:
            apart = {True: 0.0, False: 0.0}
            for name, dist in space.items():
                a, b = user.get(name), r.hyperparameters.get(name, user.get(name))
                if isinstance(dist, CategoricalDistribution) or not isinstance(a, (int, float)):
                    gap = float(a != b)
                else:  # each as a share of its searched range, as the surrogate's encoder scales it
                    gap = abs(_scale(a, dist) - _scale(b, dist))
                apart[name in chosen] += gap
            steps_apart = abs(np.log2(budgeted(r.hyperparameters, r.profile)["max_steps"] / steps))
            return round(apart[True], 6), round(apart[False], 6), steps_apart

        mine = self._by_fingerprint().get(profile.get("fingerprint"), [])
        own = [r for r in mine if r.method == method]
        near = {s.task: s.distance for s in self.similar(profile, k)}
        pool = [r for r in self.experiences() if r.task_name in near]  # whole instances: failures needs their best
        failed = {r.id: bool(f) for runs in (pool, mine) for r, f in zip(runs, failures(runs))}
        picks = [(r, None) for r in sorted(own, key=distance)[:k]] + [
            (min(runs, key=distance), d)
            for task, d in near.items()
            if (runs := [r for r in pool if r.task_name == task and r.method == method])
        ]
        out = []
        for r, task_distance in picks:
            settings = budgeted(r.hyperparameters, r.profile)
            out.append(
                {
                    "task": r.task_name,
                    "task_distance": task_distance,  # None: your own data
                    "differs": {
                        n: settings[n]
                        for n in (*space, "max_steps")
                        if n in settings and settings[n] != (steps if n == "max_steps" else user.get(n))
                    },
                    "accuracy": round(float(r.metrics["accuracy"]), 4),
                    "chance": round(chance_accuracy(r.profile), 4),
                    "failed": failed[r.id],
                }
            )
        return out

    def collapse_risk(self) -> CollapseRisk:
        """The collapse-risk model fitted on this experience (with the surrogate; refitted when the experience
        changes)."""
        return self._fitted().risk

    def forecaster(self) -> CurveForecaster:
        """The learning-curve forecaster fitted on this experience's curves (once; refitted when it changes), with
        the surrogate's out-of-task predictions that ship with the prior as an input (your own runs have none)."""
        if "forecaster" not in self._derived:
            from ..prior import expected_accuracies

            shipped = expected_accuracies()
            records = self.experiences()
            expected = {r.id: shipped[r.id] for r in records if r.id in shipped}
            self._derived["forecaster"] = CurveForecaster().fit(records, expected)
        return self._derived["forecaster"]

    def expected_accuracy(self, task, method: str, hyperparameters: dict[str, Any]) -> float:
        """The surrogate's expected final accuracy of one run of ``method`` with ``hyperparameters`` (the rest at
        the method's defaults) on ``task`` (a Task, a profile or a path)."""
        pred = self._fitted().predict(self.profile(task), [Candidate(method, hyperparameters)])
        return float(pred.mean[0, 0])

    def _by_fingerprint(self) -> dict[str, list[Experience]]:
        """The experience's runs by their dataset's fingerprint (a task's own runs condition its prediction)."""
        if "by_fingerprint" not in self._derived:
            found: dict[str, list[Experience]] = {}
            for r in self.experiences():
                found.setdefault(fingerprint_of(r), []).append(r)
            self._derived["by_fingerprint"] = found
        return self._derived["by_fingerprint"]

    def _on_machine(self, machine: str | None) -> list[Experience]:
        """The experience's usable runs made on ``machine`` (a ``machine_key``; ``""``: all of them), oldest first."""
        if machine is None:
            return []
        if "by_machine" not in self._derived:
            found: dict[str | None, list[Experience]] = {"": []}
            # by timestamp: a record read from a JSON file without an offset must not break the sort
            for r in sorted((r for r in self.experiences() if usable(r)), key=lambda r: r.created_at.timestamp()):
                found[""].append(r)
                found.setdefault(machine_key(r.environment), []).append(r)
            self._derived["by_machine"] = found
        return self._derived["by_machine"].get(machine, [])

    def local_machine(self, backend: str = "torch") -> str | None:
        """This computer's machine, as its newest run in the experience used it (found without importing torch).

        Args:
            backend: The training backend (``torch`` or ``mlx``) the run must have used.

        Returns:
            That run's ``machine_key`` (its device and threads), or ``None`` before the first run made here.
        """
        for r in reversed(self._on_machine("")):  # every usable run, newest last
            if r.environment.get("backend", "torch") == backend and same_host(r.environment):
                return machine_key(r.environment)
        return None

    def machine_speed(self, machine: str | None) -> tuple[float, int]:
        """How long runs take on a machine against the experience's machines, as ``recommend`` scales train times
        for it (from its runs of other tasks than the one asked about, so a task's factor can differ a little).

        Args:
            machine: A ``machine_key`` (``None``: none).

        Returns:
            The factor (0.1: ten times faster; 1 without timed runs on it) and the number of tasks whose timed runs
            on it gave it.
        """
        shift, _, tasks = self._fitted().machine_shift(self._on_machine(machine))
        return float(np.exp(shift)), tasks

    def _task_context(self, profile: dict, observed: list[Experience]) -> dict:
        if "context" not in self._derived:
            sizes = [c.profile["dataset_size"] for c in self.cells()[0]]
            models = {c.profile.get("model", {}).get("name") for c in self.cells()[0]}
            steps = [
                r.hyperparameters.get("max_steps") for r in self.experiences() if r.hyperparameters.get("max_steps")
            ]
            self._derived["context"] = {
                "size_range": (min(sizes), max(sizes)),
                "models": sorted(m for m in models if m),
                "steps_range": (min(steps), max(steps)) if steps else None,
            }
        return {"profile": profile, "observed": len(observed), **self._derived["context"]}

    # --- map -----------------------------------------------------------------------------------------------
    def task_map(self) -> list[dict]:
        """Every past task instance on a 2-D map of the learned embedding (its two principal components)."""
        from sklearn.decomposition import PCA

        cells, zs = self.cells()
        xy = PCA(n_components=2, random_state=0).fit_transform(zs) if len(cells) > 2 else zs[:, :2]
        names = Counter(c.task for c in cells)  # a name repeats for another sample (seed) or step budget of a task
        seeds = Counter((c.task, c.seed) for c in cells)

        def label(c: Cell) -> str:
            if names[c.task] == 1:
                return c.task
            return f"{c.task} seed {c.seed}" + (
                f", {c.key.split('|')[-1]} steps×batch" if seeds[c.task, c.seed] > 1 else ""
            )

        return [
            {
                "task": c.task,
                "label": label(c),
                "group": c.group,
                "x": round(float(p[0]), 4),
                "y": round(float(p[1]), 4),
                "best_method": c.best_method,
                "best_accuracy": round(c.best_accuracy, 4),
                "size": c.profile.get("dataset_size"),
                "domain": c.profile.get("domain"),
            }
            for c, p in zip(cells, xy)
        ]


def judged_gaps(
    cells: list[Cell],
    allowed: Sequence[str] | None = None,
    size: float | None = None,
    runs: str = "all",
    seen: float | None = None,
) -> dict[str, float]:
    """Each allowed method's (default: all) mean gap to the best over past task instances, those of a training-set
    size like ``size`` and a budget like ``seen`` (steps × batch size) counting most (``method_gaps``);
    ``runs="others"`` judges on the past runs at settings other than the methods' defaults only (on every run where
    fewer than two allowed methods have such runs)."""
    gaps = {m: g for m, g in method_gaps(cells, size, runs=runs, seen=seen).items() if allowed is None or m in allowed}
    return judged_gaps(cells, allowed, size, seen=seen) if runs != "all" and len(gaps) < 2 else gaps


def incumbent_method(
    cells: list[Cell],
    allowed: Sequence[str] | None = None,
    size: float | None = None,
    runs: str = "all",
    seen: float | None = None,
) -> str | None:
    """The experience's most reliable method among ``allowed``: the smallest of ``judged_gaps``."""
    gaps = judged_gaps(cells, allowed, size, runs, seen)
    return min(gaps, key=gaps.get) if gaps else None


@dataclass(frozen=True)
class Incumbents:
    """The methods' gaps to the best, judged on the past runs that match what a ranking compares: on every past
    run where every method's chosen setting is its defaults (``every``), on the runs at other settings only
    elsewhere (``others``); the incumbent is the method with the smallest. Why apart: over randomly set runs (IA)³ is
    the most reliable PEFT method at 1,024 examples (it rarely collapses) while LoRA and DoRA lead at their defaults,
    so the bench's runs at defaults made DoRA the incumbent over random settings, where it can collapse (dbpedia14:
    90.7 points of regret). Judging the defaults on the runs at defaults alone was measured too and not adopted: at
    64 examples full fine-tuning and DoRA are nearly tied there, and the tie flipped a pick to a collapsed DoRA run
    (BENCHMARKS.md, "Method selection"). Past instances of a like training-set size and step budget count most
    (``method_gaps``): at 1,024 examples (IA)³ leads after 80 steps, DoRA and LoRA at their defaults after 320."""

    every: dict[str, float]
    others: dict[str, float]

    @classmethod
    def of(
        cls,
        cells: list[Cell],
        allowed: Sequence[str] | None = None,
        size: float | None = None,
        seen: float | None = None,
    ) -> Incumbents:
        """Judged on ``cells`` among ``allowed`` methods, past instances like a task of ``size`` training examples
        trained on ``seen`` (steps × batch size) counting most."""
        return cls(*(judged_gaps(cells, allowed, size, runs, seen) for runs in ("all", "others")))

    def gaps(self, defaults: bool) -> dict[str, float]:
        """The gaps a ranking of settings at their defaults (``defaults``) or of other settings is judged on."""
        return self.every if defaults else self.others

    def incumbent(self, defaults: bool) -> str | None:
        gaps = self.gaps(defaults)
        return min(gaps, key=gaps.get) if gaps else None

    def among(self, candidates: Sequence[Candidate], chosen: dict[str, int]) -> str | None:
        """The incumbent for a ranking of ``chosen`` (method → index into ``candidates``)."""
        return self.incumbent(compares_defaults(candidates, chosen))


def compares_defaults(candidates: Sequence[Candidate], chosen: dict[str, int]) -> bool:
    """Whether every method's chosen candidate (method → index into ``candidates``) is at the method's defaults."""
    return all(at_defaults(candidates[i].method, candidates[i].hyperparameters) for i in chosen.values())


def rank_methods(
    pred: Prediction, chosen: dict[str, int], incumbent: str | None = None, sure: float = SURE
) -> list[str]:
    """Methods by the expected accuracy of their chosen candidate (``Prediction.expected_accuracy``: weighed by its
    collapse risk), except that the incumbent stays first unless the leader beats it in at least ``sure`` of the
    joint draws. Why: the surrogate learns a task's differences between methods from about one run per method and
    past task, and in leave-one-task-out its unsure departures from the incumbent cost more than they gained
    (benchmarks/selection_rules.py; BENCHMARKS.md)."""
    expected = pred.expected_accuracy()
    order = sorted(chosen, key=lambda m: -expected[chosen[m]])
    if incumbent in chosen and order[0] != incumbent:
        beats = beat_rate(pred, chosen[order[0]], chosen[incumbent])
        if beats is not None and beats < sure:
            order.remove(incumbent)
            order.insert(0, incumbent)
    return order


def beat_rate(pred: Prediction, a: int, b: int) -> float | None:
    """The share of the surrogate's joint draws in which candidate ``a`` scores above ``b`` (None without draws).
    Collapse risk is not drawn: letting a draw fail with its setting's risk (and score chance) changed no pick in
    leave-one-task-out on the shipped prior (BENCHMARKS.md, "Method selection")."""
    drawn = pred.joint_draws([a, b])
    return None if drawn is None else float((drawn[:, 0] > drawn[:, 1]).mean())


def _rounded_to_one(p: np.ndarray, digits: int = 4) -> list[float]:
    """Probabilities rounded to ``digits`` so that they still sum to 1 (largest remainders get the last units)."""
    scaled = p / p.sum() * 10**digits
    units = np.floor(scaled).astype(int)
    units[np.argsort(units - scaled)[: 10**digits - units.sum()]] += 1
    return [float(u) / 10**digits for u in units]


def cautious_choice(pred: Prediction, methods: list[str], feasible: np.ndarray | None = None) -> dict[str, int]:
    """Per method, the index of its candidate with the best cautious score among the feasible ones: the mean less
    half an sd (prefer settings the experience supports over bold extrapolations), averaged with chance by the
    setting's collapse risk where the prediction carries it (prefer settings that do not fail). Methods ranked by
    that candidate's expected accuracy (``rank_methods``) is the rule of ``recommend`` and of ``evaluate``."""
    cautious = pred.expected_accuracy(CAUTION)
    chosen: dict[str, int] = {}
    for i, m in enumerate(methods):
        if (feasible is None or feasible[i]) and (m not in chosen or cautious[i] > cautious[chosen[m]]):
            chosen[m] = i
    return chosen


def _round(target: str, value: float) -> float:
    return round(float(value), 4 if target == "accuracy" else 1)


def _why_blocked(pred: Prediction, i: int, max_memory_mb, max_time_s) -> str:
    reasons = []
    if max_memory_mb is not None and pred.mean[i, 2] > max_memory_mb:
        reasons.append(f"expected peak memory {pred.mean[i, 2]:.0f} MB > limit {max_memory_mb:.0f} MB")
    if max_time_s is not None and pred.mean[i, 1] > max_time_s:
        reasons.append(f"expected training time {pred.mean[i, 1]:.0f} s > limit {max_time_s:.0f} s")
    return "; ".join(reasons)


def _reasoning(
    method: str,
    rank: int,
    expected: dict,
    similar: list[SimilarTask],
    context: dict,
    blocked: str | None,
    hyperparameters: dict,
) -> str:
    p = context["profile"]
    acc = expected["accuracy"]
    parts = []
    if blocked:
        parts.append(f"Excluded by your limits: {blocked}.")
    parts.append(
        f"Expected accuracy {100 * acc['mean']:.1f}% (90% interval {100 * acc['low']:.1f}–{100 * acc['high']:.1f})."
    )
    wins = [s for s in similar if s.best_method == method]
    gaps = [s.best_accuracy - s.scores[method] for s in similar if method in s.scores]
    if similar:
        shown = wins or similar  # where it won, else which tasks were looked at
        names = ", ".join(s.task for s in shown[:3]) + ("…" if len(shown) > 3 else "")
        text = f"Best on {len(wins) or 'none'} of the {len(similar)} most similar past tasks ({names})"
        if gaps:
            text += f"; {100 * float(np.mean(gaps)):.1f} points behind their best on average"
        parts.append(text + ".")
    parts.append(
        "Settings: the method's defaults: the experience has not varied its settings at a step budget like this one "
        f"({context['seen']:g} training examples fed), so no other is suggested."
        if method in context["unvaried"]
        else "Settings: the method's defaults."
        if at_defaults(method, hyperparameters)
        else "Settings: the best-predicted among its defaults, the settings tried on past tasks and a random design."
    )
    if rank == 1:
        if p.get("task_type") == "causal_lm":
            kind = f"{p['num_classes']} label words" if p["num_classes"] else "free-text completions"
            traits = (
                f"{p['dataset_size']} training examples, causal LM on {p.get('backend', 'torch')}, {kind}, "
                f"p95 length {p.get('token_length_p95', 0):.0f} tokens"
            )
        else:
            traits = (
                f"{p['dataset_size']} training examples, {p['num_classes']} classes, "
                f"{'sentence pairs' if p.get('task_type') == 'pair' else 'single texts'}, "
                f"p95 length {p.get('token_length_p95', 0):.0f} tokens, "
                f"frozen-probe accuracy {100 * p.get('probe_accuracy', 0):.0f}%"
            )
        parts.append(f"Task traits: {traits}.")
        if kept := context.get("kept_first"):
            rival, lead, beats, gap, defaults = kept
            parts.append(
                f"Ranked first although {rival} is predicted {lead:.1f} points higher: it beats {method} in only "
                f"{100 * beats:.0f}% of the surrogate's joint draws (below {100 * SURE:.0f}%), and {method} is the "
                f"experience's most reliable method of those ranked{'' if defaults else ' away from their defaults'} "
                f"({100 * gap:.1f} points behind the best on average over past task instances, those of a size like "
                "this task's counting most)."
            )
        low, high = context["size_range"]
        if not low <= p["dataset_size"] <= high:
            parts.append(
                f"The experience covers train sizes {low}–{high}; this task's size lies outside, so expect more error "
                "than the interval says."
            )
        steps = hyperparameters.get("max_steps")
        if context["steps_range"] and steps and not context["steps_range"][0] <= steps <= context["steps_range"][1]:
            low, high = context["steps_range"]
            seen = f"{low}" if low == high else f"{low}–{high}"
            parts.append(
                f"Past runs made {seen} steps: accuracy at {steps} steps is predicted as at "
                f"{low if steps < low else high} (time scales with the steps)."
            )
        model = (p.get("model") or {}).get("name")
        if model and model not in context["models"]:
            parts.append(f"No past runs use {model}; the prediction transfers from {', '.join(context['models'])}.")
        if context["observed"]:
            parts.append(f"Conditioned on {context['observed']} run(s) of this task.")
        if context.get("other_budget"):
            parts.append(
                f"{context['other_budget']} run(s) of this task at other step budgets left out of its accuracy (they "
                "inform time and memory): a task's level at one budget does not carry to another."
            )
    return " ".join(parts)


# --- cache ---------------------------------------------------------------------------------------------------


def ship_prior(store: ExperienceStore, designs: str | Sequence[str]) -> int:
    """Package bench designs' runs as the shipped prior and refit the meta-learner shipped beside it (the two must
    agree: a test checks it). Returns the runs packaged (:func:`metapeft.prior.write_prior` says more)."""
    from ..prior import write_prior

    n = write_prior(store, designs)
    write_packaged_model()
    return n


def write_packaged_model(path: str | Path = PACKAGED_MODEL) -> int:
    """Fit the meta-learner on the shipped prior alone and store it in the package, so that a fresh install
    recommends at once (and, with its own runs, updates this fit instead of starting over); beside it, the
    surrogate's out-of-task predictions of the prior's runs, which the curve forecaster reads."""
    meta = MetaPEFT(experiences=_prior_records(), include_own=False)
    meta.fit()
    records = meta.experiences()
    _save(Path(path), meta.surrogate, _experience_key(records), len(records), sorted(r.id for r in records))
    from ..prior import EXPECTED_PATH

    expected = json.dumps(out_of_task_predictions(records), sort_keys=True)
    _atomic_write(Path(path).with_name(EXPECTED_PATH.name), lambda tmp: Path(tmp).write_text(expected))
    return len(records)


def task_folds(records: list[Experience], folds: int = 5, seed: int = 0) -> list[set[str]]:
    """The records' task groups shuffled (by ``seed``) into ``folds`` sets of nearly equal size."""
    groups = sorted({task_group(r) for r in records})
    np.random.default_rng(seed).shuffle(groups)
    return [set(groups[i::folds]) for i in range(folds)]


def out_of_task_predictions(
    records: list[Experience], folds: int | list[set[str]] = 5, seed: int = 0, progress=None
) -> dict[str, float]:
    """Each run's final accuracy as the surrogate predicts it without the run's task: the tasks are split into
    folds, and a meta-learner fitted on the other folds predicts each fold's runs (unconditioned on the task's
    own runs). These are the surrogate's inputs to the curve forecaster's fit: in-sample predictions would be
    too good, and the forecaster would trust them more than a new task deserves.

    Args:
        records: The experience.
        folds: How many folds (:func:`task_folds` with ``seed``), or the folds themselves.
        seed: Shuffles the tasks into folds.
        progress: Called with a line after each fold.

    Returns:
        The predicted final accuracy by record id.
    """
    records = [r for r in records if usable(r)]
    if isinstance(folds, int):
        folds = task_folds(records, folds, seed)
    expected: dict[str, float] = {}
    for i, held in enumerate(folds):
        meta = MetaPEFT(experiences=[r for r in records if task_group(r) not in held], include_own=False).fit()
        by_profile: dict[str, list[Experience]] = {}
        for r in records:
            if task_group(r) in held:
                by_profile.setdefault(json.dumps(r.profile, sort_keys=True), []).append(r)
        for runs in by_profile.values():
            pred = meta.surrogate.predict(runs[0].profile, [Candidate(r.method, r.hyperparameters) for r in runs])
            expected.update({r.id: round(float(m), 5) for r, m in zip(runs, pred.mean[:, 0])})
        if progress:
            progress(f"fold {i + 1}/{len(folds)}: the surrogate predicted {len(expected)} runs out of task")
    return expected


def _prior_records() -> list[Experience]:
    from ..prior import PriorExperience

    return PriorExperience().records()


def _experience_key(records: list[Experience]) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{','.join(m.name for m in list_methods())}".encode())
    for r in sorted(records, key=lambda r: r.id):
        h.update(f"{r.id}:{r.updated_at.isoformat()}|".encode())
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file of this process's own, then rename: readers never see half a file and
    concurrent writers (two searches starting at once) never collide."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the models and profiles are not secrets
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save(path: Path, surrogate: Surrogate, key: str, full_fit_records: int, ids: list[str] | None = None) -> None:
    from safetensors.numpy import save_file

    arrays, meta = surrogate.state()
    meta = {**meta, "key": key, "full_fit_records": full_fit_records, "ids": ids or [], "cache_version": CACHE_VERSION}
    _atomic_write(
        path,
        lambda tmp: save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata={"meta": json.dumps(meta)}
        ),
    )


def _load_cached(path: Path) -> tuple[Surrogate, dict] | None:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads(f.metadata()["meta"])
        if meta.get("cache_version") != CACHE_VERSION:  # made by another version: not even a start for partial_fit
            return None
        return Surrogate.from_state(load_file(str(path)), meta), meta
    except Exception:  # stale or foreign cache: refit rather than fail
        return None
