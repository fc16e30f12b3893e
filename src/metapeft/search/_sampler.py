"""A meta-learned Optuna sampler: Bayesian optimisation whose prior is the experience of past tasks.

The meta-learned surrogate predicts accuracy, time and memory for any configuration of any method on this task
(from its profile). As trials finish, the prediction is conditioned on them twice: the surrogate's own task
offset (its few-shot update) and a Gaussian process on what remains (observed minus predicted accuracy, over the
configuration features) — the surrogate is the GP's prior mean, so with no trials the search follows the
experience and with many it follows this task's evidence. Proposals maximise expected improvement in accuracy
(one objective) or an augmented-Tchebycheff scalarisation with a fresh random weighting per trial (ParEGO, for
several objectives) over candidates drawn at random and around the best trials so far.

Lifecycle (Optuna's sampler protocol): per trial Optuna calls ``infer_relative_search_space`` then
``sample_relative``, which returns values for every parameter of the joint space; ``sample_independent`` (a
random draw) serves parameters outside it. The sampler holds no state between trials beyond its random
generator: everything it knows comes from the study, so several processes sharing one study (RDB storage)
each propose from all trials finished so far.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import norm

from ..experience import Experience
from ..meta import Candidate, Surrogate
from ._space import joint_space, to_config, to_params

OBJECTIVES = ("accuracy", "train_time_s", "peak_memory_mb")


class MetaSampler(BaseSampler):
    def __init__(self, surrogate: Surrogate, profile: dict, methods: list[str], objectives: tuple[str, ...] = ("accuracy",), *,
                 budget: dict[str, Any] | None = None, n_candidates: int = 192, seed: int | None = None,
                 max_memory_mb: float | None = None, max_time_s: float | None = None):  # fmt: skip
        self.surrogate, self.profile, self.methods, self.objectives = surrogate, profile, methods, tuple(objectives)
        self.budget = budget or {}
        self.limits = ((1, max_time_s), (2, max_memory_mb))  # (column of predict's means, the user's limit)
        self.space = joint_space(methods)
        self.n_candidates = n_candidates
        self._random = RandomSampler(seed=seed)
        self._rng = np.random.default_rng(seed)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()
        self._rng = np.random.default_rng()

    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs]
        candidates = self._candidates(study, trial, done)
        # never propose what is already tried, failed or being tried (by this or another process sharing the study);
        # an enqueued trial's settings are still in its fixed_params
        tried = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING))
        taken = {_key(t.params or t.system_attrs.get("fixed_params", {})) for t in tried}
        broken = {t.params.get("method") for t in tried if t.state == TrialState.FAIL and t.user_attrs.get("error_type") == "IncompatibleMethodError"}
        candidates = [c for c in candidates if c["method"] not in broken] or candidates
        fresh = [c for c in candidates if _key(c) not in taken]
        candidates = fresh or candidates
        scores = self.acquisition(candidates, done)
        return candidates[int(np.argmax(scores))]

    # --- proposals -----------------------------------------------------------------------------------------
    def _candidates(self, study, trial: FrozenTrial, done: list[FrozenTrial]) -> list[dict[str, Any]]:
        out = [to_params(m, {}, self.space) for m in self.methods]  # every method at its defaults
        for _ in range(self.n_candidates):
            out.append({name: self._random.sample_independent(study, trial, name, dist) for name, dist in self.space.items()})
        best = sorted(done, key=lambda t: -t.user_attrs["metrics"]["accuracy"])[:3]
        for t in best:  # local moves: redraw one or two of the best trials' own settings
            method, _ = to_config(t.params)
            own = [n for n in self.space if n.startswith(method + ".")]
            for _ in range(16):
                moved = dict(t.params)
                for name in self._rng.choice(own, size=min(len(own), int(self._rng.integers(1, 3))), replace=False):
                    name = str(name)
                    moved[name] = self._random.sample_independent(study, trial, name, self.space[name])
                out.append(moved)
        return out

    def predict(self, candidates: list[dict[str, Any]], done: list[FrozenTrial]) -> tuple[np.ndarray, np.ndarray]:
        """Means (n, 3: accuracy, time, memory) and accuracy sd, conditioned on this study's finished trials."""
        configs = [to_config(c) for c in candidates]
        observed = [self._experience(t) for t in done]
        pred = self.surrogate.predict(self.profile, [Candidate(m, {**hp, **self.budget}) for m, hp in configs], observed=observed)
        mean = pred.mean.copy()
        sd = pred.sd()
        if len(done) >= 2:
            mean[:, 0], sd = self._residual_gp(configs, done, observed, mean[:, 0], sd)
        return mean, sd

    def _residual_gp(self, configs, done, observed, mean, sd):
        """scikit-learn GP on (observed accuracy − surrogate) over configuration features."""
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        enc = self.surrogate.encoder
        length = self.profile.get("sequence_length") or 128

        def features(method, hp):
            return enc.encode(method, hp, length)

        seen = [to_config(t.params) for t in done]
        x_obs = np.stack([features(m, hp) for m, hp in seen])
        prior = self.surrogate.predict(self.profile, [Candidate(m, {**hp, **self.budget}) for m, hp in seen], observed=observed).mean[:, 0]
        resid = np.array([t.user_attrs["metrics"]["accuracy"] for t in done]) - prior
        # amplitude fixed to the surrogate's own uncertainty: two or three trials cannot estimate it
        kernel = ConstantKernel(float(np.mean(sd) ** 2), "fixed") * RBF(1.0, (0.05, 20.0)) + WhiteKernel(1e-4, (1e-6, 1e-2))
        gp = GaussianProcessRegressor(kernel, normalize_y=False, random_state=0).fit(x_obs, resid)
        g_mean, g_sd = gp.predict(np.stack([features(m, hp) for m, hp in configs]), return_std=True)
        return mean + g_mean, np.sqrt(np.maximum(g_sd**2, 1e-8))

    def acquisition(self, candidates: list[dict[str, Any]], done: list[FrozenTrial]) -> np.ndarray:
        mean, sd = self.predict(candidates, done)
        scores = self._scores(mean, sd, done)
        # configurations expected over the user's limits come last (the pick ignores them anyway)
        over = np.zeros(len(candidates), bool)
        for column, limit in self.limits:
            if limit is not None:
                over |= mean[:, column] > limit
        return np.where(over, -np.inf, scores) if not over.all() else scores

    def _scores(self, mean: np.ndarray, sd: np.ndarray, done: list[FrozenTrial]) -> np.ndarray:
        if self.objectives == ("accuracy",):
            best = max((t.user_attrs["metrics"]["accuracy"] for t in done), default=float(np.max(mean[:, 0])) - 1e-3)
            z = (mean[:, 0] - best) / sd
            return (mean[:, 0] - best) * norm.cdf(z) + sd * norm.pdf(z)  # expected improvement
        # ParEGO: minimise the augmented Tchebycheff scalarisation of (error, log time, log memory) under a random
        # weighting, with accuracy taken optimistically (one sd) so that uncertain configurations get explored
        columns = {"accuracy": 1.0 - (mean[:, 0] + sd), "train_time_s": np.log(mean[:, 1]), "peak_memory_mb": np.log(mean[:, 2])}
        f = np.stack([columns[o] for o in self.objectives], 1)
        lo, hi = f.min(0), f.max(0)
        f = (f - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
        weights = self._rng.dirichlet(np.ones(len(self.objectives)))
        return -((f * weights).max(1) + 0.05 * (f * weights).sum(1))

    def _experience(self, t: FrozenTrial) -> Experience:
        method, _ = to_config(t.params)
        return Experience(task_name=self.profile.get("task_name", ""), method=method, model="", hyperparameters=t.user_attrs["hyperparameters"],
                          metrics=t.user_attrs["metrics"], profile=self.profile, status="finished")  # fmt: skip


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)
