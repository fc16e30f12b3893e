"""A meta-learned Optuna sampler: Bayesian optimisation whose prior is the experience of past tasks.

The meta-learned surrogate predicts accuracy, time and memory for any configuration of any method on this task
(from its profile). As trials finish, the prediction is conditioned on them twice: the surrogate's own task
offset (its few-shot update) and Gaussian processes on what remains (observed minus predicted accuracy, and the
ratios of observed to predicted time and memory, over the configuration features) — the surrogate is the GPs'
prior mean, so with no trials the search follows the experience and with many it follows this task's evidence.
Proposals maximise expected improvement in accuracy (one objective) or, for several objectives, the expected
improvement of the trials' hypervolume, among candidates drawn at random and around the best trials so far.

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
from ._config import OBJECTIVES
from ._space import joint_space, to_config, to_params


class MetaSampler(BaseSampler):
    def __init__(
        self,
        surrogate: Surrogate,
        profile: dict,
        methods: list[str],
        objectives: tuple[str, ...] = ("accuracy",),
        *,
        budget: dict[str, Any] | None = None,
        n_candidates: int = 192,
        seed: int | None = None,
        max_memory_mb: float | None = None,
        max_time_s: float | None = None,
    ):
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

    def sample_independent(
        self, study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        done = [
            t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "metrics" in t.user_attrs
        ]
        candidates = self._candidates(study, trial, done)
        # never propose what is already tried, failed or being tried (by this or another process sharing the study);
        # an enqueued trial's settings are still in its fixed_params
        tried = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
        )
        taken = {_key(t.params or t.system_attrs.get("fixed_params", {})) for t in tried}
        broken = {
            t.params.get("method")
            for t in tried
            if t.state == TrialState.FAIL and t.user_attrs.get("error_type") == "IncompatibleMethodError"
        }
        candidates = [c for c in candidates if c["method"] not in broken] or candidates
        fresh = [c for c in candidates if _key(c) not in taken]
        candidates = fresh or candidates
        scores = self.acquisition(candidates, done)
        return candidates[int(np.argmax(scores))]

    # --- proposals -----------------------------------------------------------------------------------------
    def _candidates(self, study, trial: FrozenTrial, done: list[FrozenTrial]) -> list[dict[str, Any]]:
        out = [to_params(m, {}, self.space) for m in self.methods]  # every method at its defaults
        for _ in range(self.n_candidates):
            out.append(
                {name: self._random.sample_independent(study, trial, name, dist) for name, dist in self.space.items()}
            )
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
        pred = self.surrogate.predict(
            self.profile, [Candidate(m, {**hp, **self.budget}) for m, hp in configs], observed=observed
        )
        mean, sd = pred.mean.copy(), pred.sd()
        if len(done) >= 2:
            mean, sd = self._residual_gp(configs, done, observed, mean, sd)
        return mean, sd

    def _residual_gp(self, configs, done, observed, mean, sd):
        """scikit-learn GPs, over configuration features, on what the surrogate gets wrong for this task: observed
        minus predicted accuracy, and the log ratio of observed to predicted time and memory. The surrogate's own
        conditioning shifts the task's time and memory by one offset for every method; a method that the task runs
        dearer than predicted (head-only at 87 MB, predicted 80) would otherwise look like a gain on the front
        however often it is tried."""
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        enc = self.surrogate.encoder
        length = self.profile.get("sequence_length") or 128
        seen = [to_config(t.params) for t in done]
        x_obs = np.stack([enc.encode(m, hp, length) for m, hp in seen])
        x_new = np.stack([enc.encode(m, hp, length) for m, hp in configs])
        prior = self.surrogate.predict(
            self.profile, [Candidate(m, {**hp, **self.budget}) for m, hp in seen], observed=observed
        ).mean
        metrics = [t.user_attrs["metrics"] for t in done]
        out = mean.copy()
        resid = np.array([m["accuracy"] for m in metrics]) - prior[:, 0]
        # amplitude fixed to the surrogate's own uncertainty: two or three trials cannot estimate it
        kernel = ConstantKernel(float(np.mean(sd) ** 2), "fixed") * RBF(1.0, (0.05, 20.0)) + WhiteKernel(
            1e-4, (1e-6, 1e-2)
        )
        g_mean, g_sd = (
            GaussianProcessRegressor(kernel, random_state=0).fit(x_obs, resid).predict(x_new, return_std=True)
        )
        out[:, 0] += g_mean
        # time and memory over the settings that change a step's cost only: a trial measures them for every
        # configuration that differs from it in learning rate or schedule alone
        free = enc.cost_free_columns
        x_obs[:, free], x_new[:, free] = 0.0, 0.0
        for column, name in ((1, "train_time_s"), (2, "peak_memory_mb")):
            ok = [i for i, m in enumerate(metrics) if (m.get(name) or 0) > 0]
            if len(ok) >= 2:
                ratio = np.log([metrics[i][name] for i in ok]) - np.log(prior[ok, column])
                kernel = ConstantKernel(0.01, (1e-4, 1.0)) * RBF(1.0, (0.05, 20.0)) + WhiteKernel(1e-3, (1e-6, 1e-1))
                out[:, column] *= np.exp(
                    GaussianProcessRegressor(kernel, random_state=0).fit(x_obs[ok], ratio).predict(x_new)
                )
        return out, np.sqrt(np.maximum(g_sd**2, 1e-8))

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
        # several objectives: the expected hypervolume this configuration adds to the front found so far (EHVI,
        # over the accuracy's predictive normal by Gauss-Hermite quadrature; time and memory at their medians), so
        # that what the front already holds is not proposed again, as a random scalarisation of the predictions
        # alone (ParEGO, before) did. benchmarks/search_acquisition.py compares the two. Where no candidate adds
        # any, ParEGO ranks them.
        nodes, node_weights = np.polynomial.hermite_e.hermegauss(7)
        draws = [self._losses(mean[:, 0] + z * sd, mean[:, 1], mean[:, 2]) for z in nodes]
        seen = [
            m for m in (t.user_attrs["metrics"] for t in done) if all(m.get(o) is not None for o in self.objectives)
        ]
        observed = self._losses(*np.array([[m.get(o) for o in OBJECTIVES] for m in seen], float).reshape(-1, 3).T)
        if "accuracy" in self.objectives:
            # a gain counts only beyond the measurement noise of the trials' accuracies (binomial over their test
            # examples), as a margin in expected improvement: near-copies of a trial differ by less than a test set
            # can tell apart
            acc = np.array([m["accuracy"] for m in seen], float)
            n = np.array([m.get("eval_examples") or 300 for m in seen], float)
            observed[:, self.objectives.index("accuracy")] -= np.sqrt(acc * (1 - acc) / n)
        both = np.vstack([*draws, observed])
        lo, hi = both.min(0), both.max(0)
        scale = lambda f: (f - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)  # noqa: E731
        gain = sum(
            w * _hypervolume_gain(scale(f), scale(observed)) for w, f in zip(node_weights / node_weights.sum(), draws)
        )
        if gain.max() > 1e-12:
            return gain
        return self._parego(scale(draws[len(nodes) // 2]))

    def _parego(self, f: np.ndarray) -> np.ndarray:
        """ParEGO's score of losses scaled to [0, 1]: minus their augmented-Tchebycheff scalarisation under a fresh
        random weighting."""
        weights = self._rng.dirichlet(np.ones(f.shape[1]))
        return -((f * weights).max(1) + 0.05 * (f * weights).sum(1))

    def _losses(self, accuracy: np.ndarray, time_s: np.ndarray, memory_mb: np.ndarray) -> np.ndarray:
        """(n, objectives) to minimise: error, log time, log memory, for the study's objectives."""
        columns = {"accuracy": 1.0 - accuracy, "train_time_s": np.log(time_s), "peak_memory_mb": np.log(memory_mb)}
        return np.stack([columns[o] for o in self.objectives], 1).reshape(len(accuracy), len(self.objectives))

    def _experience(self, t: FrozenTrial) -> Experience:
        method, _ = to_config(t.params)
        return Experience(
            task_name=self.profile.get("task_name", ""),
            method=method,
            model="",
            hyperparameters=t.user_attrs["hyperparameters"],
            metrics=t.user_attrs["metrics"],
            profile=self.profile,
            status="finished",
        )


def _hypervolume_gain(points: np.ndarray, front: np.ndarray, reference: float = 1.1) -> np.ndarray:
    """The hypervolume each point adds to ``front`` (losses scaled to [0, 1]; reference point 1.1 in each)."""
    # Optuna's exact WFG hypervolume: not re-exported publicly, but the one its own samplers and plots use
    from optuna._hypervolume import compute_hypervolume

    ref = np.full(points.shape[1], reference)
    front = front[np.all(front < ref, 1)]
    base = compute_hypervolume(front, ref) if len(front) else 0.0
    gain = np.zeros(len(points))
    for i, p in enumerate(points):
        if np.all(p < ref) and not np.any(np.all(front <= p, 1)):  # a point the front dominates adds nothing
            gain[i] = compute_hypervolume(np.vstack([front, p]), ref) - base
    return gain


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)
