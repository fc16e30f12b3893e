"""Performance surrogate: (task, method, hyperparameters) → accuracy, train time and peak memory, each with an
uncertainty.

A deep ensemble (Lakshminarayanan et al., 2017): members are small MLPs trained on bootstrap resamples of whole
*tasks*, so that their disagreement measures how far a new task lies from the experience; the run noise around
their mean is measured (in-sample residual variance) rather than predicted per input, which with a few dozen
tasks collapses. The members are trained together as one batched network (``torch.bmm``), which
costs about as much as training one.

Uncertainty is then calibrated on tasks held out of the fit (grouped cross-validation): the variance that makes
the 90% interval cover 90% of held-out runs (split-conformal, by training-set size), and the split of the error
into a task-level offset and run-level noise, which conditions predictions on a few observed runs of the new task
(a Bayesian update of that task's offset: the few-shot adaptation of the meta-learner). The offset is shared by
every configuration of the task, so it corrects levels and narrows intervals but does not reorder configurations;
per-configuration evidence is the search's job (its GP on the surrogate's residuals, ``search/_sampler.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from .._environment import machine_key, single_threaded
from ..experience import Experience, cell_key, examples_fed, like_budget, measured_time, task_group, usable
from . import _nets
from ._embedding import TaskEmbedder
from ._features import TARGETS, ConfigEncoder, budgeted, effective_max_length, profile_dict, steps_of, targets
from ._protocol import Selector
from ._risk import CollapseRisk, chance_accuracy

FORMAT = (
    11  # of the saved state: 2 = numpy weights without the unused variance outputs; 3 = with pick_scale; 4 = x_range;
)
# 5 = time learned per step; 6 = time and memory read without the cost-free settings; 7 = P(best) calibration;
# 8 = base rates by training-set size: best_won, best_ran, best_size replace best_rate;
# 9 = causal_lm and backend features; 10 = accuracy's interval calibrated by training-set size; 11 = accuracy's
# interval after runs of the task calibrated by training-set size (cond_by_size)
_STATE_ARRAYS = (
    "x_mean",
    "x_std",
    "x_range",
    "y_mean",
    "y_std",
    "bounds",
    "method_effect",
    "extra_var",
    "extra_size",
    "extra_by_size",
    "task_var",
    "noise_var",
    "cond_by_size",
    "shrink",
    "pick_scale",
    "best_calibration",
    "best_won",
    "best_ran",
    "best_size",
)  # fitted arrays saved beside the networks
Z90 = 1.6449  # standard normal quantile of 0.95: a central 90% interval is mean ± Z90·sd
# a method's setting is chosen by its mean accuracy less CAUTION sds (recommend's cautious_choice); the P(best)
# calibration must fit on the same choice
CAUTION = 0.5
# a machine's speed for one run, against the experience's (the shipped prior: one CPU thread per run), is unknown
# until it has runs: prior variance of its log-time offset, broad enough for a datacenter GPU (~50x faster, log 3.9:
# two sds) that one run of another task takes it most of the way; the newest MACHINE_RUNS runs set it
MACHINE_VAR = 4.0
MACHINE_RUNS = 256


@dataclass
class Candidate:
    """A configuration to predict: a method and its hyperparameters (missing ones are the method's defaults; a missing
    or 0 ``max_steps`` is the budget training gives the task, :func:`~metapeft.methods.default_steps`)."""

    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Draws:
    """Joint accuracy draws for n candidates, made only for the candidates asked about (a recommendation scores ~800
    and asks about ~10: drawing them all was a third of its time). Each draw picks an ensemble member, shared by all
    candidates (a common shift does not change which is best), then adds run noise from the candidate's own random
    stream, so a subset of columns equals that subset of the full matrix."""

    member_mean: np.ndarray  # (members, n): each member's mean accuracy per candidate
    member: np.ndarray  # (draws,): the member of each draw
    noise_sd: float
    seed: int
    ids: np.ndarray  # (n,): each column's candidate index in the prediction it came from (its noise stream)

    def columns(self, idx) -> np.ndarray:
        """The draws of the candidates at ``idx``: (draws, len(idx))."""
        idx = np.asarray(idx, int)
        noise = np.zeros((len(self.member), len(idx)))
        for j, i in enumerate(idx):
            noise[:, j] = np.random.default_rng((self.seed, int(self.ids[i]))).standard_normal(len(self.member))
        return self.member_mean[:, idx][self.member] + self.noise_sd * noise

    def take(self, idx) -> Draws:
        return Draws(self.member_mean[:, idx], self.member, self.noise_sd, self.seed, self.ids[idx])


@dataclass
class Prediction:
    """Predictions for n candidates. ``mean``, ``low`` and ``high`` are (n, 3) arrays in natural units (accuracy,
    seconds, MB; ``low``/``high`` bound the 90% interval; time and memory are learned in logs, so their "mean" is
    the predictive median, which limits such as ``--max-memory`` are held against); joint accuracy draws
    (``joint_draws``, from ``samples`` (draws, n) when given or made lazily from ``draws``) give the probability that
    each candidate is the best; ``accuracy_sd`` (n,) is the accuracy's sd before the interval is clipped to [0, 1]
    (near 100% the clipped interval would understate it); ``best_prior`` (n,) and ``best_power`` recalibrate that
    probability (see ``best_probability``)."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    samples: np.ndarray | None = None
    accuracy_sd: np.ndarray | None = None
    best_prior: np.ndarray | None = None
    best_power: float = 1.0
    draws: Draws | None = None
    # (n,): P(a run at this setting fails: near chance or far below the best; meta._risk)
    fail: np.ndarray | None = None
    chance: float = 0.0  # the task's chance accuracy: what a failed run is taken to score

    def expected_accuracy(self, caution: float = 0.0) -> np.ndarray:
        """Each candidate's accuracy as the selection weighs it: the mean less ``caution`` sds and, where the
        collapse risk is known, averaged with chance: (1 − P(fail))·(mean − caution·sd) + P(fail)·chance."""
        accuracy = self.mean[:, 0] - caution * self.sd()
        return accuracy if self.fail is None else (1 - self.fail) * accuracy + self.fail * self.chance

    def take(self, idx: list[int]) -> Prediction:
        """The prediction for the candidates at ``idx`` (e.g. one per method, to ask which method is best)."""

        def cut(v, axis=0):
            return None if v is None else np.take(v, idx, axis=axis)

        return Prediction(
            cut(self.mean),
            cut(self.low),
            cut(self.high),
            cut(self.samples, 1),
            cut(self.accuracy_sd),
            cut(self.best_prior),
            self.best_power,
            None if self.draws is None else self.draws.take(idx),
            cut(self.fail),
            self.chance,
        )

    def joint_draws(self, idx: list[int] | None = None) -> np.ndarray | None:
        """Joint accuracy draws (draws, len(idx)) of the candidates at ``idx`` (all by default); None without any."""
        idx = np.arange(self.mean.shape[0]) if idx is None else np.asarray(idx, int)
        if self.samples is not None:
            return self.samples[:, idx]
        return None if self.draws is None else self.draws.columns(idx)

    def sd(self) -> np.ndarray:
        """The accuracy's sd per candidate (from the 90% interval where the predictor gave none)."""
        return self.accuracy_sd if self.accuracy_sd is not None else (self.high[:, 0] - self.low[:, 0]) / (2 * Z90)

    def best_probability(self) -> np.ndarray:
        """Each candidate's probability of being the best, from the joint draws: the share of draws it wins, raised
        to ``best_power`` and weighted by ``exp(best_prior)`` (the surrogate's calibration: its method's past rate of
        being best), then normalised. The prior is per method, so ask with one candidate per method."""
        samples = self.joint_draws()
        if samples is None:
            p = np.zeros(self.mean.shape[0])
            p[int(np.argmax(self.mean[:, 0]))] = 1.0
            return p
        winners = np.argmax(samples, axis=1)
        p = np.bincount(winners, minlength=samples.shape[1]) / len(winners)
        if self.best_prior is None:
            return p
        return _calibrated(p, self.best_prior, self.best_power)


class Surrogate(Selector):
    """Deep-ensemble surrogate over the experience store.

    Lifecycle: ``fit(experiences)`` trains the task embedding, the ensemble and (with ``calibrate=True``) the
    uncertainty calibration from scratch; ``partial_fit(experiences)`` continues training both networks on the
    current experience when runs arrive; ``predict(profile, candidates, observed=...)`` scores configurations
    for a task, conditioned on its own runs when ``observed`` holds some. Both fits also fit ``risk``, the
    collapse-risk model (``meta._risk.CollapseRisk``), whose P(fail) the predictions carry and the selection rule
    weighs; ``state`` saves it with the networks.
    """

    def __init__(
        self,
        members: int = 5,
        hidden: int = 64,
        epochs: int = 400,
        calibrate: bool = True,
        folds: int = 4,
        seed: int = 0,
        embedder: TaskEmbedder | None = None,
        collapse_risk: bool = True,
    ):
        self.members, self.hidden, self.epochs, self.calibrate, self.folds, self.seed = (
            members,
            hidden,
            epochs,
            calibrate,
            folds,
            seed,
        )
        self.embedder = embedder or TaskEmbedder(seed=seed)
        self.encoder = ConfigEncoder()
        self.weights: _nets.Weights | None = None  # the ensemble's, as numpy arrays (see _nets)
        self.x_mean = self.x_std = self.y_mean = self.y_std = None
        self.x_range = None  # (2, d): the standardised inputs' range in training; inputs are clamped to it
        self.bounds = np.array([[-np.inf] * len(TARGETS), [np.inf] * len(TARGETS)], np.float32)
        self.method_effect = np.zeros(len(self.encoder.methods), np.float32)
        self._reset_calibration()
        self.n_records = 0
        # fit the collapse-risk model with the ensemble (the calibration's fold fits do not need it)
        self.collapse_risk = collapse_risk
        self.risk: CollapseRisk | None = None

    def _reset_calibration(self, spread: np.ndarray | None = None) -> None:
        """Uncalibrated defaults: the targets' own spread over past runs, three quarters of it task to task."""
        spread = np.ones(len(TARGETS), np.float32) if spread is None else np.asarray(spread, np.float32)
        self.extra_var = (
            spread.copy()
        )  # variance added to the members' spread so that 90% intervals cover 90% (held-out tasks)
        # accuracy's added variance by log2 training-set size (knots; empty: extra_var[0] at every size)
        self.extra_size = np.zeros(0, np.float32)
        self.extra_by_size = np.zeros(0, np.float32)
        self.task_var = 0.75 * spread  # variance of a task's offset (held-out tasks)
        self.noise_var = 0.25 * spread  # variance of a run around its task's offset
        # factor on accuracy's conditioned variance (after runs of the task) at the knots extra_size (empty: 1)
        self.cond_by_size = np.zeros(0, np.float32)
        self.shrink = np.ones(1, np.float32)  # factor on the network's task-specific correction of the method effects
        self.pick_scale = np.ones(
            1, np.float32
        )  # factor on the run noise of the draws behind best-method probabilities
        # best-method probabilities ∝ (share of draws won)^power × (method's past rate of being best)^weight; the
        # rates come from past task instances (tie-split wins, runs, log2 training-set size), see base_rates
        self.best_calibration = np.array([1.0, 0.0], np.float32)  # (power, weight): uncalibrated, the draws alone
        self.best_won = np.zeros((0, len(self.encoder.methods)), np.float32)
        self.best_ran = np.zeros((0, len(self.encoder.methods)), np.float32)
        self.best_size = np.zeros(0, np.float32)

    # --- data ----------------------------------------------------------------------------------------------
    def _x(self, profiles: list[dict], rows: list[tuple[str, dict, int]]) -> np.ndarray:
        if profiles and all(
            p is profiles[0] for p in profiles
        ):  # one task's candidates (recommend scores ~700): featurise it once
            task = np.repeat(self.embedder.featurizer.transform(profiles[:1]), len(profiles), 0)
            z = np.repeat(self.embedder.predict(profiles[:1]), len(profiles), 0)
        else:
            task = self.embedder.featurizer.transform(profiles)
            z = self.embedder.predict(profiles)
        conf = np.stack([self.encoder.encode(m, hp, length) for m, hp, length in rows])
        probe = np.array([[p.get("probe_accuracy", 0.5)] for p in profiles], np.float32)  # last column: see _forward
        return np.concatenate([task, z, conf, probe], axis=1).astype(np.float32)

    def _x_runs(self, records: list[Experience], profile: dict | None = None) -> np.ndarray:
        """Inputs for past runs, each with its own task profile unless ``profile`` names the task for all."""
        profiles = [profile or r.profile for r in records]
        return self._x(
            profiles, [(r.method, r.hyperparameters, effective_max_length(r, p)) for r, p in zip(records, profiles)]
        )

    def _rows(
        self, records: list[Experience], fit_effects: bool = False
    ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """Inputs and the four trained targets: accuracy relative to its task instance's mean, log time per step,
        log memory, and that mean (the task's level) above the frozen-probe accuracy of its profile. Selection depends
        only on the relative part, so the network learns it as a target of its own instead of as a small
        difference between two large, noisy numbers; and the level is learned as the lift over the probe, which
        alone explains most of how hard a task is (r = 0.86 on the prior's tasks)."""
        records = [r for r in records if usable(r)]
        x = self._x_runs(records)
        y = np.stack([targets(r) for r in records])
        cells = [cell_key(r) for r in records]
        level = np.full(len(records), np.nan, np.float32)
        for c in set(cells):
            idx = [i for i, k in enumerate(cells) if k == c]
            by_method: dict[str, list[float]] = {}
            for i in idx:
                by_method.setdefault(records[i].method, []).append(float(y[i, 0]))
            if len(by_method) >= 3:  # fewer methods say too little about the task's level
                # mean of per-method means: a method tried often does not pull the level towards itself
                level[idx] = np.mean([np.mean(v) for v in by_method.values()])
        probe = x[:, -1]
        relative = y[:, 0] - level
        if fit_effects:  # each method's mean standing across past tasks: the network learns what a task changes
            self.method_effect = np.array(
                [
                    np.nanmean(relative[[r.method == m for r in records]])
                    if any(r.method == m for r in records)
                    else 0.0
                    for m in self.encoder.methods
                ],
                np.float32,
            )
            self.method_effect = np.nan_to_num(self.method_effect)
        y4 = np.stack([relative - self._effect(x), y[:, 1], y[:, 2], level - probe], axis=1)
        return x, y4, [task_group(r) for r in records], cells

    def _config_columns(self) -> slice:
        """Where the configuration features sit in the inputs built by ``_x`` (the method one-hot first)."""
        start = self.embedder.featurizer.dim + self.embedder.dim
        return slice(start, start + self.encoder.dim)

    def _effect(self, x: np.ndarray) -> np.ndarray:
        """The method main effect of each row (from its method one-hot)."""
        start = self._config_columns().start
        return x[:, start : start + len(self.encoder.methods)] @ self.method_effect

    # --- fitting -------------------------------------------------------------------------------------------
    @single_threaded
    def fit(self, records: list[Experience]) -> Surrogate:
        records = _timed_on_reference([r for r in records if usable(r)])
        if len({task_group(r) for r in records}) < 2:
            raise ValueError("the surrogate needs finished runs on at least 2 tasks")
        self.embedder.fit(records)
        x, y, groups, cells = self._rows(records, fit_effects=True)
        if np.isnan(y[:, 0]).all():  # the networks would be left at their random initialisation
            raise ValueError(
                "the surrogate learns how methods compare within a task, and no task instance in the "
                "experience has finished runs of 3 "
                "or more methods; run more methods on one task (e.g. metapeft bench) or keep the shipped prior"
            )
        self.x_mean, self.x_std = x.mean(0), x.std(0)
        self.x_std[self.x_std < 1e-6] = 1.0
        self.x_range = None
        self._extend_range(x)
        self.y_mean, self.y_std = np.nanmean(y, 0), np.nanstd(y, 0)
        self.y_mean, self.y_std = (
            np.nan_to_num(self.y_mean),
            np.where(np.nan_to_num(self.y_std) > 1e-6, self.y_std, 1.0),
        )
        import torch

        torch.manual_seed(self.seed)
        self.weights = _nets.weights_of(_nets.ensemble_net(self.members, x.shape[1], self.hidden, y.shape[1]))
        self._train(x, y, groups, self.epochs)
        self.n_records = len(records)
        seen = np.stack([targets(r) for r in records])
        # predictions of time and memory stay within a factor e of what the experience has seen
        self.bounds = np.stack(
            [np.nan_to_num(np.nanmin(seen, 0)) - 1.0, np.nan_to_num(np.nanmax(seen, 0)) + 1.0]
        ).astype(np.float32)
        self._reset_calibration(np.nanvar(seen, 0))
        if self.calibrate:
            self._calibrate(records)
        self.risk = CollapseRisk(self.seed).fit(records) if self.collapse_risk else None
        return self

    @single_threaded
    def partial_fit(self, records: list[Experience], epochs: int | None = None) -> Surrogate:
        """Continue training on the current experience (old and new runs together) without starting over."""
        if self.weights is None:
            return self.fit(records)
        records = _timed_on_reference([r for r in records if usable(r)])
        self.embedder.partial_fit(records)
        x, y, groups, _ = self._rows(records)
        self._extend_range(x)
        self._train(x, y, groups, epochs or max(50, self.epochs // 4))
        self.n_records = len(records)
        self.risk = CollapseRisk(self.seed).fit(records) if self.collapse_risk else None
        return self

    def covers(self, records: list[Experience]) -> bool:
        """Whether ``records`` lie inside the inputs this fit was trained on. ``partial_fit`` keeps the fit's
        standardisation, so it can only learn runs like those seen: a new step budget or train size needs ``fit``
        (after a partial fit on four runs of 3 steps, sst2 was predicted at 57%; after a full fit, 74%)."""
        records = [r for r in records if usable(r)]
        if not records:
            return True
        xn = self._standardise(self._x_runs(records))
        return bool(np.all((xn >= self.x_range[0] - 1e-4) & (xn <= self.x_range[1] + 1e-4)))

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.x_mean) / self.x_std

    def _extend_range(self, x: np.ndarray) -> None:
        xn = self._standardise(x)
        seen = np.stack([xn.min(0), xn.max(0)]).astype(np.float32)
        self.x_range = (
            seen
            if self.x_range is None
            else np.stack([np.minimum(self.x_range[0], seen[0]), np.maximum(self.x_range[1], seen[1])])
        )

    def _train(self, x: np.ndarray, y: np.ndarray, groups: list[str], epochs: int) -> None:
        import torch

        rng = np.random.default_rng(self.seed)
        names = sorted(set(groups))
        index = np.array([names.index(g) for g in groups])
        # each member sees a bootstrap resample of whole tasks: its errors on unseen tasks differ from the others'
        counts = np.stack(
            [np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)) for _ in range(self.members)]
        )
        w = torch.from_numpy(counts[:, index].astype(np.float32))
        xn = self._standardise(x)
        xt, cost, task_only = (torch.from_numpy(v) for v in (xn, self._cost_only(xn), self._task_only(xn)))
        yn = (y - self.y_mean) / self.y_std
        mask = torch.from_numpy(~np.isnan(yn)).float()
        yt = torch.from_numpy(np.nan_to_num(yn))
        weight = w[..., None] * mask[None]
        total = weight.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
        net = _nets.ensemble_net(self.members, x.shape[1], self.hidden, y.shape[1], self.weights)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
        # squared error, not the Gaussian likelihood with a learned variance per input: with a few dozen tasks a
        # variance head learns to be confident about its training rows and collapses; the noise is measured instead
        for _ in range(epochs):
            mu = torch.cat([net(xt)[..., :1], net(cost)[..., 1:3], net(task_only)[..., 3:]], dim=-1)  # as in _raw
            loss = ((0.5 * (yt[None] - mu) ** 2 * weight) / total).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.weights = _nets.weights_of(net)

    def _calibrate(self, records: list[Experience]) -> None:
        """Fit on all but a fold of tasks, predict the fold: held-out errors set the interval widening and split
        the error into task offset and run noise."""
        from sklearn.model_selection import GroupKFold

        groups = np.array([task_group(r) for r in records])
        folds = min(self.folds, len(set(groups)))
        if len(set(groups)) < 3:  # each fold's fit needs two tasks: too little to calibrate, keep the raw spread
            return
        resid, ens_var, cells, relative, level, truth, methods, tasks, sizes = [], [], [], [], [], [], [], [], []
        for train, test in GroupKFold(n_splits=folds).split(records, groups=groups):
            sub = Surrogate(
                self.members, self.hidden, self.epochs, calibrate=False, seed=self.seed, collapse_risk=False
            ).fit([records[i] for i in train])
            held = [records[i] for i in test]
            x = sub._x_runs(held)
            raw = sub._raw(x)  # per member
            members = sub._forward(x, raw)
            relative.append(raw[..., 0])
            level.append(raw[..., 3] + x[:, -1] + sub._effect(x))
            y = np.stack([targets(r) for r in held])
            truth.append(y[:, 0])
            resid.append(y - members.mean(0))
            ens_var.append(members.var(0))
            cells += [cell_key(r) for r in held]
            methods += [r.method for r in held]
            tasks += [task_group(r) for r in held]
            sizes += [_log_size(r.profile) for r in held]
        resid, ens_var = np.concatenate(resid), np.concatenate(ens_var)
        cells = np.array(cells)
        # how much of the network's task-specific correction to the methods' main effects is real: the
        # least-squares factor from held-out tasks (within each, observed deviations from the task's mean, less the
        # main effects' deviations, against the network's); 0 falls back to the main effects alone
        member_relative, member_level = np.concatenate(relative, axis=1), np.concatenate(level, axis=1)
        relative, level, observed = member_relative.mean(0), member_level.mean(0), np.concatenate(truth)

        def centred(v: np.ndarray) -> np.ndarray:
            return v - np.array([v[cells == c].mean() for c in cells])

        deviation = centred(observed) - centred(level)
        predicted = centred(relative)
        fitted = float(np.clip((predicted * deviation).sum() / max((predicted**2).sum(), 1e-12), 0.0, 1.0))
        self.shrink[0] = _selection_shrink(fitted, relative, level, observed, cells)
        # residuals and member spread of the shrunk predictions, as _forward makes them (the spread at factor 1 is
        # not the one predictions have)
        shrunk = np.clip(self.shrink[0] * member_relative + member_level, 0.0, 1.0)
        resid[:, 0] = observed - shrunk.mean(0)
        ens_var[:, 0] = shrunk.var(0)
        for t in range(len(TARGETS)):
            ok = ~np.isnan(resid[:, t])
            if ok.sum() < 10:
                continue
            self.extra_var[t] = _coverage_variance(resid[ok, t], ens_var[ok, t])
            self.task_var[t], self.noise_var[t] = _variance_parts(resid[ok, t], cells[ok])
        sizes, tasks = np.array(sizes), np.array(tasks)
        if len(sizes) >= 10:  # else too few held-out runs to calibrate by size: extra_var at every size
            groups = _size_groups(sizes, tasks)  # accuracy is known for every usable run
            self.extra_size = np.array([np.median(sizes[g]) for g in groups], np.float32)
            self.extra_by_size = np.array([_coverage_variance(resid[g, 0], ens_var[g, 0]) for g in groups], np.float32)
            self.cond_by_size = _conditioned_scale(
                resid[:, 0],
                ens_var[:, 0],
                cells,
                groups,
                self.task_var[0],
                self.noise_var[0],
                self._extra(sizes)[:, 0],
                seed=self.seed,
            )
        self.pick_scale[0] = _pick_scale(shrunk, observed, cells, float(np.sqrt(self.noise_var[0])), self.seed)
        self.best_calibration[:], self.best_won, self.best_ran, self.best_size = _best_calibration(
            shrunk,
            observed,
            cells,
            np.array(methods),
            tasks,
            sizes,
            self.encoder.methods,
            float(np.sqrt(self.noise_var[0]) * self.pick_scale[0]),
            self._extra(sizes)[:, 0],
            self.seed,
        )

    # --- prediction ----------------------------------------------------------------------------------------
    def _task_only(self, xn: np.ndarray) -> np.ndarray:
        """Standardised inputs with the configuration choices at their mean. The lift (the task's level) is read
        from these: it belongs to the task under its budget, and a lift that varied with the method would reorder
        the methods by noise (it did: leave-one-task-out regret 2.1 → 3.1 points)."""
        budget = set(self.encoder.budget_columns)
        return self._at_mean(xn, [i for i in range(self.encoder.dim) if i not in budget])

    def _cost_only(self, xn: np.ndarray) -> np.ndarray:
        """Standardised inputs with the settings that do not change a step's cost at their mean: time and memory are
        read from these (before, head-only runs were predicted at 73-83 MB by learning rate; measured, 87 MB at
        any)."""
        return self._at_mean(xn, self.encoder.cost_free_columns)

    def _at_mean(self, xn: np.ndarray, columns: list[int]) -> np.ndarray:
        """``xn`` with these configuration features (indices into the encoder's) at their mean."""
        out = xn.copy()
        start = self._config_columns().start
        out[:, [start + i for i in columns]] = 0.0
        return out

    def _raw(self, x: np.ndarray) -> np.ndarray:
        """Each member's four trained outputs (relative accuracy, log s per step, log MB, lift): (members, n, 4)."""
        # clamped to the training range: a network extrapolates without bound (sst2 at 4,000 examples, with an
        # experience of 64 and 1,024, was predicted at 60% against a frozen probe of 76%; clamped, 74%); beyond the
        # range a task is predicted as the nearest seen, and the reasoning says that it lies outside
        xn = np.clip(self._standardise(x), self.x_range[0], self.x_range[1]).astype(np.float32)
        # one batched pass over the distinct rows of the three views (a task's candidates share one task-only row and
        # a few hundred cost-only rows: half the work of a recommendation)
        views = np.concatenate([xn, self._cost_only(xn), self._task_only(xn)])
        first: dict[bytes, int] = {}
        inverse = np.array([first.setdefault(row.tobytes(), len(first)) for row in views])
        unique = np.empty(len(first), int)
        unique[inverse] = np.arange(len(views))
        out = _nets.ensemble(self.weights, views[unique])[:, inverse]
        n = len(xn)
        mu = np.concatenate([out[:, :n, :1], out[:, n : 2 * n, 1:3], out[:, 2 * n :, 3:]], axis=-1)
        return mu * self.y_std + self.y_mean

    def _forward(self, x: np.ndarray, raw: np.ndarray | None = None) -> np.ndarray:
        """Each member's prediction of (accuracy, log s per step, log MB): (members, n, 3), from ``_raw(x)`` (pass
        it if already computed)."""
        mu = self._raw(x) if raw is None else raw
        # shrunk relative part + lift + probe accuracy; a network far from its data can extrapolate without bound:
        # keep accuracy inside [0, 1]
        accuracy = np.clip(self._effect(x) + self.shrink * mu[..., 0] + mu[..., 3] + x[:, -1], 0.0, 1.0)
        time, memory = (np.clip(mu[..., t], self.bounds[0, t], self.bounds[1, t]) for t in (1, 2))
        return np.stack([accuracy, time, memory], -1)

    def _extra(self, log_size: np.ndarray) -> np.ndarray:
        """The variance added to the members' spread, (n, targets) for n log2 training-set sizes: accuracy's
        interpolated between the sizes it was calibrated at (the nearest one's beyond them)."""
        out = np.tile(self.extra_var, (len(log_size), 1))
        if len(self.extra_size):
            out[:, 0] = np.interp(log_size, self.extra_size, self.extra_by_size)
        return out

    def predict(
        self,
        profile: dict,
        candidates: list[Candidate],
        observed: list[Experience] | None = None,
        draws: int = 2000,
        machine: list[Experience] | None = None,
    ) -> Prediction:
        """Each candidate's accuracy, train time and peak memory on the task with 90% intervals, and joint draws.

        Args:
            profile: The task's profile.
            candidates: The configurations to predict.
            observed: Runs of this task: their residuals move its predictions and narrow the intervals.
            draws: Joint accuracy draws (for P(best)).
            machine: Runs made on the machine whose times are wanted, of any task: the other tasks' set how much
                faster or slower it is than the experience's machines (``machine_shift``); ``observed`` runs made on
                it (the same ``machine_key``) read the task on it, the shipped prior's the task alone, others
                nothing of its time. ``None``: the experience's times.

        Returns:
            The :class:`Prediction`.
        """
        if self.weights is None:
            raise ValueError("Surrogate is not fitted")
        profile = profile_dict(profile)
        # a candidate without a step budget is predicted at the one training will give it
        candidates = [
            c if c.hyperparameters.get("max_steps") else Candidate(c.method, budgeted(c.hyperparameters, profile))
            for c in candidates
        ]
        rows = [(c.method, c.hyperparameters, effective_max_length(c.hyperparameters, profile)) for c in candidates]
        mu = self._forward(self._x([profile] * len(rows), rows))
        settings = [{**self.encoder.defaults[c.method], **c.hyperparameters} for c in candidates]
        # time (per step) and memory are conditioned on every observed run of the task; accuracy on those at a step
        # budget like the candidate's: a task's level after 80 steps does not carry to 320 (5 task folds of the
        # prior: two 80-step runs of a task took the error of its 320-step predictions from 5.1 points to 8.5 and
        # their coverage from 96% to 66%; two 320-step runs, to 2.3 at 97%; benchmarks/conditioned_intervals.py)
        observed = [r for r in observed or [] if usable(r)]
        resid, size = self._residuals(profile, observed), _log_size(profile)
        every = self._condition(resid, size)
        # the machine's shift, from its runs of other tasks (this task's offset must not count twice)
        task = {task_group(r) for r in observed} | {str(profile.get("task_name", "")).split("@")[0]}
        shift, unsure, _ = self.machine_shift([r for r in machine or [] if task_group(r) not in task])
        here = {machine_key(r.environment) for r in machine or []} - {None}
        # the task's runs made on the machine read m + τ; the shipped prior's (the reference machines') τ; the rest
        # (another machine, or a user's run recorded before the processor was) nothing of its time
        where = np.array(
            [1 if machine_key(r.environment) in here else 0 if r.source == "prior" else -1 for r in observed]
        )
        if unsure == 0 and (where == 1).any():  # the machine's first runs are of this task: its offset from them
            unsure = MACHINE_VAR
        if unsure > 0:
            every[0][1], every[1][1] = self._time_on_machine(resid[:, 1], where, shift, unsure, size)
        offset, extra = np.tile(every[0], (len(rows), 1)), np.tile(every[1], (len(rows), 1))
        fed = np.array([examples_fed(hp) for hp in settings], float)  # every candidate has its max_steps by now
        for seen in np.unique(fed):
            like = self._condition(resid[[like_budget(r, seen) for r in observed]], size)
            offset[fed == seen, 0], extra[fed == seen, 0] = like[0][0], like[1][0]
        mu = mu + offset
        mu[..., 1] += np.log([steps_of(hp) for hp in settings])  # per step → the run's total
        mean = mu.mean(0)
        sd = np.sqrt(mu.var(0) + extra)
        low, high = mean - Z90 * sd, mean + Z90 * sd
        # joint draws: a member, then run noise around its mean (the members' disagreement is shared by all
        # candidates of one draw, so a common shift does not change which is best)
        member = np.random.default_rng(self.seed).integers(0, mu.shape[0], draws)
        joint = Draws(
            mu[..., 0], member, float(np.sqrt(self.noise_var[0]) * self.pick_scale[0]), self.seed, np.arange(len(rows))
        )
        column = {m: j for j, m in enumerate(self.encoder.methods)}
        rate = base_rates(self.best_won, self.best_ran, self.best_size, _log_size(profile))
        prior = self.best_calibration[1] * np.log(rate[[column[c.method] for c in candidates]])
        natural = [lambda a: np.clip(a, 0.0, 1.0), np.exp, np.exp]
        return Prediction(
            mean=np.stack([natural[t](mean[:, t]) for t in range(3)], 1),
            low=np.stack([natural[t](low[:, t]) for t in range(3)], 1),
            high=np.stack([natural[t](high[:, t]) for t in range(3)], 1),
            accuracy_sd=sd[:, 0],
            best_prior=prior,
            best_power=float(self.best_calibration[0]),
            draws=joint,
            fail=None
            if self.risk is None
            else self.risk.predict(profile, [(c.method, c.hyperparameters) for c in candidates]),
            chance=chance_accuracy(profile),
        )

    def _residuals(self, profile: dict | None, observed: list[Experience]) -> np.ndarray:
        """Observed runs' targets less the ensemble's mean prediction for them: (runs, targets), NaN where a run did
        not measure a target; each run with its own task's profile when ``profile`` is ``None``."""
        if not observed:
            return np.zeros((0, len(TARGETS)))
        return np.stack([targets(r) for r in observed]) - self._forward(self._x_runs(observed, profile)).mean(0)

    def _condition(self, resid: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean of the task's offset from its observed runs' residuals (``_residuals``), and the variance to
        add to the members' spread (conjugate normal update with the held-out task and noise variances, accuracy's
        scaled to cover 90% at the task's log2 training-set ``size``; without runs, the calibrated variance).
        ``predict`` chooses the runs."""
        extra = self._extra(np.array([size]))[0]
        if not len(resid):
            return np.zeros(len(TARGETS)), extra
        n = (~np.isnan(resid)).sum(0)
        r = np.where(n > 0, np.nansum(resid, 0) / np.maximum(n, 1), 0.0)
        gain = n * self.task_var / (n * self.task_var + self.noise_var)
        conditioned = self.task_var * self.noise_var / (n * self.task_var + self.noise_var) + self.noise_var
        if len(self.cond_by_size):
            conditioned[0] *= np.interp(size, self.extra_size, self.cond_by_size)
        return gain * r, np.minimum(conditioned, extra)

    def _time_on_machine(
        self, resid: np.ndarray, where: np.ndarray, shift: float, unsure: float, size: float
    ) -> tuple[float, float]:
        """The task's log-time offset on a machine whose shift (``machine_shift``) is ``shift`` ± ``unsure``, and
        the variance to add to the members' spread: a joint normal update of the machine's offset m and the
        task's τ from the task's runs' time ``resid``, those made on that machine (``where`` 1) reading m + τ,
        those made on the reference machines (0) τ alone, the others (-1) nothing; without any, the calibrated
        zero-shot variance widened by ``unsure``."""
        extra = float(self._extra(np.array([size]))[0, 1]) + unsure
        keep = (where >= 0) & np.isfinite(resid)
        if not keep.any():
            return shift, extra
        noise = float(self.noise_var[1])
        design = np.stack([where[keep], np.ones(int(keep.sum()))], 1).astype(float)
        prior_precision = np.diag([1.0 / unsure, 1.0 / float(self.task_var[1])])
        cov = np.linalg.inv(prior_precision + design.T @ design / noise)
        mean = cov @ (prior_precision @ np.array([shift, 0.0]) + design.T @ resid[keep] / noise)
        return float(mean.sum()), min(float(cov.sum()) + noise, extra)

    def machine_shift(self, runs: list[Experience]) -> tuple[float, float, int]:
        """How much slower a machine is than the experience's, from its runs of other tasks.

        A conjugate normal update of ``MACHINE_VAR`` with the mean of the tasks' mean log-time residuals, each
        carrying its task's offset and run noise (so tasks count, not runs); runs without a measured time (timed
        beside other work) say nothing.

        Args:
            runs: Runs made on the machine (the newest ``MACHINE_RUNS`` are read).

        Returns:
            The log-time shift (s per step; 0 without timed runs: the experience's times), its variance, and the
            number of tasks it was read from.
        """
        by_task: dict[str, list[float]] = {}
        runs = [r for r in runs if usable(r)][-MACHINE_RUNS:]
        if runs:
            for r, t in zip(runs, self._residuals(None, runs)[:, 1]):
                if np.isfinite(t):
                    by_task.setdefault(task_group(r), []).append(float(t))
        if not by_task:
            return 0.0, 0.0, 0
        n, spread = len(by_task), float(self.task_var[1] + self.noise_var[1])
        mean = float(np.mean([np.mean(v) for v in by_task.values()]))
        return (
            n * MACHINE_VAR / (n * MACHINE_VAR + spread) * mean,
            MACHINE_VAR * spread / (n * MACHINE_VAR + spread),
            n,
        )

    # --- persistence ---------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, emb_meta = self.embedder.state()
        arrays = {f"embedder.{k}": v for k, v in arrays.items()}
        arrays.update({f"net.{k}": v for k, v in self.weights.items()})
        for name in _STATE_ARRAYS:
            arrays[name] = np.asarray(getattr(self, name), dtype=np.float32)
        if self.risk is not None:
            arrays.update({f"risk.{k}": v for k, v in self.risk.state().items()})
        meta = {
            "format": FORMAT,
            "members": self.members,
            "hidden": self.hidden,
            "epochs": self.epochs,
            "folds": self.folds,
            "seed": self.seed,
            "methods": self.encoder.methods,
            "features": self.encoder.names,
            "n_records": self.n_records,
            "embedder": emb_meta,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> Surrogate:
        if meta.get("format") != FORMAT:
            raise ValueError(f"saved surrogate has format {meta.get('format')}, this version reads {FORMAT}")
        embedder = TaskEmbedder.from_state(
            {k[len("embedder.") :]: v for k, v in arrays.items() if k.startswith("embedder.")}, meta["embedder"]
        )
        self = cls(meta["members"], meta["hidden"], meta["epochs"], True, meta["folds"], meta["seed"], embedder)
        self.encoder = ConfigEncoder(meta["methods"])
        if self.encoder.names != meta["features"]:
            raise ValueError("saved surrogate was trained on another method zoo")
        for name in _STATE_ARRAYS:
            setattr(self, name, np.asarray(arrays[name]))
        self.weights = {k[len("net.") :]: v for k, v in arrays.items() if k.startswith("net.")}
        risk = {k[len("risk.") :]: v for k, v in arrays.items() if k.startswith("risk.")}
        self.risk = CollapseRisk.from_state(risk) if risk else None  # saved before it was: refitted by MetaPEFT
        self.n_records = meta["n_records"]
        return self


def _timed_on_reference(records: list[Experience]) -> list[Experience]:
    """``records`` with the train times of runs made off the experience's reference machines left out (copies
    without ``train_time_s``): the shipped prior's runs when it is in the experience, else those of the machine with
    the most runs. The network learns time per step on the reference; another machine is a shift on top
    (``machine_shift``), which a network fitted on its runs as well absorbs into their tasks' features: with half of
    each held-out fold's tasks run 20x faster in the fit, the other half's times were predicted 7.3x off from that
    machine's runs, where 1.2–1.35x with them kept out (``benchmarks/machine_times.py``)."""
    if any(r.source == "prior" for r in records):
        reference = [r.source == "prior" for r in records]
    else:  # among the timed runs only, so that a subset (a calibration fold's fit) keeps the same reference
        keys = [machine_key(r.environment) for r in records]
        timed = [k for k, r in zip(keys, records) if measured_time(r)]
        common = max(sorted(set(timed), key=str), key=timed.count) if timed else None
        reference = [k == common for k in keys]
    return [
        r
        if ok or "train_time_s" not in r.metrics
        else replace(r, metrics={k: v for k, v in r.metrics.items() if k != "train_time_s"})
        for r, ok in zip(records, reference)
    ]


def _cell_index(cells: np.ndarray) -> list[np.ndarray]:
    """The rows of each task instance."""
    return [np.flatnonzero(cells == c) for c in np.unique(cells)]


def _selection_shrink(
    fitted: float, relative: np.ndarray, level: np.ndarray, observed: np.ndarray, cells: np.ndarray
) -> float:
    """The factor on the task-specific correction that picks best on held-out tasks: the least-squares factor
    ``fitted`` predicts accuracy best, but a correction can lower the error of the level and still reorder the
    close methods of a task wrongly. Mean held-out regret (best run minus the run ranked first, per task
    instance) is compared on a grid; ``fitted`` stays unless another factor picks clearly better (by more than
    a quarter of a point: differences below that are the folds' noise)."""
    index = _cell_index(cells)

    def regret(factor: float) -> float:
        score = factor * relative + level
        return float(np.mean([observed[i].max() - observed[i][np.argmax(score[i])] for i in index]))

    grid = sorted({fitted, *np.linspace(0.0, 1.0, 11)})
    regrets = {f: regret(f) for f in grid}
    best = min(grid, key=lambda f: (regrets[f], abs(f - fitted)))
    return fitted if regrets[fitted] - regrets[best] <= 0.0025 else float(best)


def _pick_scale(
    members: np.ndarray, observed: np.ndarray, cells: np.ndarray, noise_sd: float, seed: int, draws: int = 1000
) -> float:
    """The factor on the run noise of ``predict``'s joint draws that makes the probability of being best honest on
    held-out tasks: it minimises the negative log probability given to each task instance's actual best run
    (a proper score, like temperature scaling of a classifier). The robust run-noise estimate ignores the heavy
    tails of the errors, so unscaled draws were overconfident (ECE 0.14 on the 352-run prior)."""
    rng = np.random.default_rng(seed)
    index = [i for i in _cell_index(cells) if len(i) >= 2]
    if not index:
        return 1.0
    drawn = [members[np.ix_(rng.integers(0, members.shape[0], draws), i)] for i in index]  # a member per draw
    z = [rng.standard_normal((draws, len(i))) for i in index]  # common random numbers: a smooth curve over the grid
    best = [np.flatnonzero(observed[i] >= observed[i].max() - 1e-9) for i in index]

    def loss(scale: float) -> float:
        out = []
        for m, e, b in zip(drawn, z, best):
            winners = np.argmax(m + scale * noise_sd * e, axis=1)
            out.append(-np.log(max(np.isin(winners, b).mean(), 1.0 / draws)))
        return float(np.mean(out))

    grid = np.geomspace(0.25, 8.0, 16)
    return float(grid[int(np.argmin([loss(s) for s in grid]))])


def _calibrated(p: np.ndarray, log_prior: np.ndarray, power: float, floor: float = 2.5e-4) -> np.ndarray:
    """softmax(power · log p + log_prior); ``floor`` (half a draw in 2,000) keeps a method no draw picked possible."""
    logit = power * np.log(np.maximum(p, floor)) + log_prior
    q = np.exp(logit - logit.max())
    return q / q.sum()


SIZE_BANDWIDTH = (
    2.0  # octaves: leave-one-task-out log loss of P(best) on 1,027 runs 2.059 without, 2.036 at 1, 2.035 at 2
)


def _log_size(profile: dict) -> float:
    return float(np.log2(max(1, profile.get("dataset_size") or 1)))


def base_rates(won: np.ndarray, ran: np.ndarray, sizes: np.ndarray, size: float) -> np.ndarray:
    """Per method, how often it was best on the past task instances it ran on, those of a training-set size like
    ``size`` (log2) counting most. Why by size: full fine-tuning was best on 47% of the instances at 1,024 examples
    and on 22% at 64, and one rate for all sizes gave the ranked-first method the same confidence at both.
    Smoothed: a method that never won keeps some probability."""
    k = np.exp(-0.5 * ((sizes - size) / SIZE_BANDWIDTH) ** 2)
    return (k @ won + 0.5) / (k @ ran + 0.5 * won.shape[1])


def _best_calibration(
    members: np.ndarray,
    observed: np.ndarray,
    cells: np.ndarray,
    methods: np.ndarray,
    tasks: np.ndarray,
    sizes: np.ndarray,
    names: list[str],
    noise_sd: float,
    extra_var: np.ndarray,
    seed: int,
    draws: int = 1000,
) -> tuple[np.ndarray, ...]:
    """How far to trust the draws' 'probability that this method is best' against how often the method has been
    best on past tasks. Fitted like temperature scaling (Guo et al., 2017) with the base rate as a second input,
    by the log loss of each held-out task instance's best method(s): probabilities ∝ (share of draws won)^power ×
    rate^weight, the draws over one run per method chosen as ``recommend`` chooses (best mean − sd/2). Why: on the
    880-run prior the draws alone were underconfident for full fine-tuning (0.25 given, best on 33% of task
    instances) and overconfident for head-only (0.08 given, 1%): the method ranking has little task-specific
    signal yet (fitted leave-one-task-out there: power 0.1, weight 1; the shipped fit: see docs/meta-learning.md).
    Methods tied for best share the win. Returns ([power, weight], and per instance: wins and runs per method of
    ``names``, log2 training-set size — what ``base_rates`` reads)."""
    rng = np.random.default_rng(seed)
    index = [i for i in _cell_index(cells) if len(set(methods[i])) >= 3]
    if len(index) < 5:
        return (
            np.array([1.0, 0.0]),
            np.zeros((0, len(names)), np.float32),
            np.zeros((0, len(names)), np.float32),
            np.zeros(0, np.float32),
        )
    names_index = {m: j for j, m in enumerate(names)}
    cautious = members.mean(0) - CAUTION * np.sqrt(members.var(0) + extra_var)
    won = np.zeros((len(index), len(names)))  # tie-split wins per cell and method
    drawn = np.full((len(index), len(names)), np.nan)  # share of draws won (NaN: the method was not run there)
    for n, i in enumerate(index):
        present = sorted(set(methods[i]), key=names_index.get)
        best = {m: observed[i][methods[i] == m].max() for m in present}
        top = [m for m in present if best[m] >= max(best.values()) - 1e-9]
        won[n, [names_index[m] for m in top]] = 1.0 / len(top)
        chosen = [i[methods[i] == m][np.argmax(cautious[i[methods[i] == m]])] for m in present]
        values = members[np.ix_(rng.integers(0, members.shape[0], draws), chosen)] + noise_sd * rng.standard_normal(
            (draws, len(chosen))
        )
        drawn[n, [names_index[m] for m in present]] = np.bincount(values.argmax(1), minlength=len(present)) / draws
    ran = ~np.isnan(drawn)
    cell_task = np.array([tasks[i[0]] for i in index])
    cell_size = np.array([sizes[i[0]] for i in index])
    # each cell is scored with the rates of the other tasks, as a new task would be
    held_rates = []
    for n in range(len(index)):
        other = cell_task != cell_task[n]
        held_rates.append(base_rates(won[other], ran[other], cell_size[other], cell_size[n]))

    def loss(power: float, weight: float) -> float:
        out = 0.0
        for n in range(len(index)):
            q = _calibrated(drawn[n, ran[n]], weight * np.log(held_rates[n][ran[n]]), power)
            out -= float((won[n, ran[n]] * np.log(q)).sum())
        return out / len(index)

    grid = [(a, b) for a in np.linspace(0.0, 1.5, 16) for b in np.linspace(0.0, 1.5, 16)]
    power, weight = min(grid, key=lambda ab: (loss(*ab), abs(ab[0] - 1.0) + ab[1]))
    return np.array([power, weight]), won.astype(np.float32), ran.astype(np.float32), cell_size.astype(np.float32)


def _robust_var(x: np.ndarray) -> float:
    """Variance from the median absolute deviation (equal to the variance for normal data)."""
    return float((1.4826 * np.median(np.abs(x - np.median(x)))) ** 2)


def _size_groups(sizes: np.ndarray, tasks: np.ndarray, min_tasks: int = 5, min_runs: int = 50) -> list[np.ndarray]:
    """Masks of held-out runs grouped by training-set size, for calibration within each (Mondrian conformal
    prediction, Vovk et al., 2005). Why: one variance for all sizes covered 83% of held-out runs at 64 examples and
    93-94% at 256 and 1,024 (errors shrink as data grows), so small tasks got intervals too narrow and large ones
    too wide. Sizes (log2) group by the nearest power of two; a group with fewer than ``min_tasks`` tasks or
    ``min_runs`` runs joins the next larger one (the last joins the one before it). Sorted by size."""
    bins = np.round(sizes)
    groups: list[np.ndarray] = []
    current = np.zeros(len(sizes), bool)
    for b in np.unique(bins):
        current |= bins == b
        if len(set(tasks[current])) >= min_tasks and current.sum() >= min_runs:
            groups.append(current)
            current = np.zeros(len(sizes), bool)
    if current.any():
        if groups:
            groups[-1] = groups[-1] | current
        else:
            groups.append(current)
    return groups


def _variance_parts(resid: np.ndarray, cells: np.ndarray) -> tuple[float, float]:
    """Held-out errors split into the variance of a task instance's offset and of a run around it: (task, noise).
    Robust spreads (1.4826 × median absolute deviation): one task the folds predicted badly must not decide how
    much every task's offset may vary."""
    offsets = {c: resid[cells == c].mean() for c in set(cells)}
    within = resid - np.array([offsets[c] for c in cells])
    noise = max(_robust_var(within) * len(resid) / max(1, len(resid) - len(offsets)), 1e-8)  # cell means removed
    task = max(_robust_var(np.array(list(offsets.values()))) - noise / max(1.0, len(resid) / len(offsets)), 1e-8)
    return float(task), float(noise)


def _conditioned_scale(
    resid: np.ndarray,
    ens_var: np.ndarray,
    cells: np.ndarray,
    groups: list[np.ndarray],
    task_var: float,
    noise_var: float,
    cap: np.ndarray,
    level: float = 0.9,
    draws: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Split-conformal calibration of accuracy's interval after runs of the task, per size group: the factor on the
    conditioned variance (posterior task variance + run noise, as ``Surrogate._condition`` makes it, capped at the
    zero-shot ``cap``) that puts ``level`` of the held-out errors inside their intervals. Each held-out instance is
    simulated with 1, 2 and 3 of its runs observed (``draws`` random choices each) and the rest predicted. Why: the
    conjugate update's variances alone covered 97% of the rest at 64 examples and 83% at 256 (5 folds of the
    prior). The factor lies in [0.01, 1000]: at 1000 the cap binds (the intervals after runs are the zero-shot ones);
    a group with fewer than 10 simulated predictions keeps 1 (the conjugate update as it is)."""
    rng = np.random.default_rng(seed)
    simulated: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows predicted, their errors, conditioned var)
    for instance in _cell_index(cells):
        for k in (1, 2, 3):
            if len(instance) <= k + 1:
                continue
            post = task_var * noise_var / (k * task_var + noise_var) + noise_var
            gain = k * task_var / (k * task_var + noise_var)
            for _ in range(draws):
                order = rng.permutation(instance)
                seen, rest = order[:k], order[k:]
                simulated.append((rest, resid[rest] - gain * resid[seen].mean(), np.full(len(rest), post)))
    if not simulated:
        return np.zeros(0, np.float32)
    rows, err, part = (np.concatenate(column) for column in zip(*simulated))
    out = np.ones(len(groups), np.float32)
    for i, g in enumerate(groups):
        mine = g[rows]
        if mine.sum() >= 10:
            e, base, conditioned, limit = err[mine], ens_var[rows[mine]], part[mine], cap[rows[mine]]

            def covers(log_factor: float) -> bool:  # coverage grows with the factor
                var = base + np.minimum(np.exp(log_factor) * conditioned, limit)
                return bool(np.mean(np.abs(e) <= Z90 * np.sqrt(var)) >= level)

            out[i] = np.exp(_smallest(covers, np.log(1e-2), np.log(1e3), 40))
    return out


def _coverage_variance(resid: np.ndarray, ens_var: np.ndarray, level: float = 0.9) -> float:
    """The smallest variance which, added to the members' spread, puts ``level`` of the held-out errors inside
    their central interval (split-conformal calibration, solved by bisection)."""

    def covers(extra: float) -> bool:
        return bool(np.mean(np.abs(resid) <= Z90 * np.sqrt(ens_var + extra)) >= level)

    return 1e-12 if covers(0.0) else _smallest(covers, 0.0, float(np.max(resid**2)) + 1e-12, 60)


def _smallest(holds: Callable[[float], bool], low: float, high: float, steps: int) -> float:
    """The smallest value in [``low``, ``high``] at which ``holds`` (false below it, true above) is true, by
    ``steps`` bisections; ``high`` where it never holds."""
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if holds(mid) else (mid, high)
    return high
