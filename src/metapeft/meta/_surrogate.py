"""Performance surrogate: (task, method, hyperparameters) → accuracy, train time and peak memory, each with an
uncertainty.

A deep ensemble (Lakshminarayanan et al., 2017): members are small MLPs with a Gaussian head (mean and variance per
target), trained on bootstrap resamples of whole *tasks*, so that their disagreement measures how far a new task
lies from the experience. The members are trained together as one batched network (``torch.bmm``), which
costs about as much as training one.

Uncertainty is then calibrated on tasks held out of the fit (grouped cross-validation): the factor that makes
the 90% interval cover 90% of held-out runs (split-conformal), and the split of the error into a task-level
offset and run-level noise, which conditions predictions on a few observed runs of the new task (a Bayesian
update of that task's offset: the few-shot adaptation of the meta-learner). The offset is shared by every
configuration of the task, so it corrects levels and narrows intervals but does not reorder configurations;
per-configuration evidence is the search's job (its GP on the surrogate's residuals, ``search/_sampler.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._environment import single_threaded
from ..experience import Experience
from ._embedding import TaskEmbedder
from ._features import TARGETS, ConfigEncoder, cell_key, effective_max_length, profile_dict, targets, task_group, usable

Z90 = 1.6449
  # standard normal quantile of 0.95: a central 90% interval is mean ± Z90·sd


@dataclass
class Candidate:
    """A configuration to predict: a method and its hyperparameters (missing ones are the method's defaults)."""

    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """Predictions for n candidates. ``mean``, ``low`` and ``high`` are (n, 3) arrays in natural units (accuracy,
    seconds, MB; ``low``/``high`` bound the 90% interval); ``samples`` (draws, n) are joint accuracy draws used for
    the probability that each candidate is the best."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    samples: np.ndarray | None = None

    def best_probability(self) -> np.ndarray:
        if self.samples is None:
            p = np.zeros(self.mean.shape[0])
            p[int(np.argmax(self.mean[:, 0]))] = 1.0
            return p
        winners = np.argmax(self.samples, axis=1)
        return np.bincount(winners, minlength=self.samples.shape[1]) / len(winners)


class _Ensemble(nn.Module):
    def __init__(self, members: int, d_in: int, hidden: int, d_out: int):
        super().__init__()

        def weight(*shape):
            return nn.Parameter(torch.randn(members, *shape) * math.sqrt(2.0 / shape[0]))

        self.w1, self.b1 = weight(d_in, hidden), nn.Parameter(torch.zeros(members, 1, hidden))
        self.w2, self.b2 = weight(hidden, hidden), nn.Parameter(torch.zeros(members, 1, hidden))
        self.w3, self.b3 = weight(hidden, 2 * d_out), nn.Parameter(torch.zeros(members, 1, 2 * d_out))
        self.d_out = d_out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(torch.einsum("nd,kdh->knh", x, self.w1) + self.b1)
        h = torch.relu(torch.bmm(h, self.w2) + self.b2)
        out = torch.bmm(h, self.w3) + self.b3
        return out[..., : self.d_out], out[..., self.d_out :].clamp(-9.0, 3.0)


class Surrogate:
    """Deep-ensemble surrogate over the experience store.

    Lifecycle: ``fit(experiences)`` trains the task embedding, the ensemble and (with ``calibrate=True``) the
    uncertainty calibration from scratch; ``partial_fit(experiences)`` continues training both networks on the
    current experience when runs arrive; ``predict(profile, candidates, observed=...)`` scores configurations
    for a task, conditioned on its own runs when ``observed`` holds some.
    """

    def __init__(self, members: int = 5, hidden: int = 64, epochs: int = 400, calibrate: bool = True, folds: int = 4, seed: int = 0, embedder: TaskEmbedder | None = None):
        self.members, self.hidden, self.epochs, self.calibrate, self.folds, self.seed = members, hidden, epochs, calibrate, folds, seed
        self.embedder = embedder or TaskEmbedder(seed=seed)
        self.encoder = ConfigEncoder()
        self.net: _Ensemble | None = None
        self.x_mean = self.x_std = self.y_mean = self.y_std = None
        self._reset_calibration()
        self.n_records = 0

    def _reset_calibration(self) -> None:
        self.scale = np.ones(len(TARGETS), np.float32)  # conformal widening of the predicted sd, per target
        self.task_var = np.zeros(len(TARGETS), np.float32)  # variance of a task's offset (held-out tasks)
        self.noise_var = np.ones(len(TARGETS), np.float32)  # variance of a run around its task's offset
        self.relative_scale = np.ones(1, np.float32)  # widening of the run-to-run accuracy noise (for P(best))

    # --- data ----------------------------------------------------------------------------------------------
    def _x(self, profiles: list[dict], rows: list[tuple[str, dict, int]]) -> np.ndarray:
        task = self.embedder.featurizer.transform(profiles)
        z = self.embedder.predict(profiles)
        conf = np.stack([self.encoder.encode(m, hp, length) for m, hp, length in rows])
        return np.concatenate([task, z, conf], axis=1).astype(np.float32)

    def _rows(self, records: list[Experience]) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """Inputs and the four trained targets: accuracy relative to its task instance's mean, log time, log
        memory, and that mean (the task's level). Selection depends only on the relative part, so the network
        learns it as a target of its own instead of as a small difference between two large, noisy numbers."""
        records = [r for r in records if usable(r)]
        profiles = [r.profile for r in records]
        rows = [(r.method, r.hyperparameters, effective_max_length(r, r.profile)) for r in records]
        x = self._x(profiles, rows)
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
        y4 = np.stack([y[:, 0] - level, y[:, 1], y[:, 2], level], axis=1)
        return x, y4, [task_group(r) for r in records], cells

    # --- fitting -------------------------------------------------------------------------------------------
    @single_threaded
    def fit(self, records: list[Experience]) -> Surrogate:
        records = [r for r in records if usable(r)]
        if len({task_group(r) for r in records}) < 2:
            raise ValueError("the surrogate needs finished runs on at least 2 tasks")
        self.embedder.fit(records)
        x, y, groups, cells = self._rows(records)
        self.x_mean, self.x_std = x.mean(0), x.std(0)
        self.x_std[self.x_std < 1e-6] = 1.0
        self.y_mean, self.y_std = np.nanmean(y, 0), np.nanstd(y, 0)
        self.y_mean, self.y_std = np.nan_to_num(self.y_mean), np.where(np.nan_to_num(self.y_std) > 1e-6, self.y_std, 1.0)
        torch.manual_seed(self.seed)
        self.net = _Ensemble(self.members, x.shape[1], self.hidden, y.shape[1])
        self._train(x, y, groups, self.epochs)
        self.n_records = len(records)
        self._reset_calibration()
        if self.calibrate:
            self._calibrate(records)
        return self

    @single_threaded
    def partial_fit(self, records: list[Experience], epochs: int | None = None) -> Surrogate:
        """Continue training on the current experience (old and new runs together) without starting over."""
        if self.net is None:
            return self.fit(records)
        records = [r for r in records if usable(r)]
        self.embedder.partial_fit(records)
        x, y, groups, _ = self._rows(records)
        self._train(x, y, groups, epochs or max(50, self.epochs // 4))
        self.n_records = len(records)
        return self

    def _train(self, x: np.ndarray, y: np.ndarray, groups: list[str], epochs: int) -> None:
        rng = np.random.default_rng(self.seed)
        names = sorted(set(groups))
        index = np.array([names.index(g) for g in groups])
        # each member sees a bootstrap resample of whole tasks: its errors on unseen tasks differ from the others'
        counts = np.stack([np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names)) for _ in range(self.members)])
        w = torch.from_numpy(counts[:, index].astype(np.float32))
        xt = torch.from_numpy((x - self.x_mean) / self.x_std)
        yn = (y - self.y_mean) / self.y_std
        mask = torch.from_numpy(~np.isnan(yn)).float()
        yt = torch.from_numpy(np.nan_to_num(yn))
        weight = w[..., None] * mask[None]
        total = weight.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
        opt = torch.optim.Adam(self.net.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(epochs):
            mu, logvar = self.net(xt)
            nll = 0.5 * (logvar + (yt[None] - mu) ** 2 / logvar.exp())
            loss = ((nll * weight) / total).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def _calibrate(self, records: list[Experience]) -> None:
        """Fit on all but a fold of tasks, predict the fold: held-out errors set the interval widening and split
        the error into task offset and run noise."""
        from sklearn.model_selection import GroupKFold

        groups = np.array([task_group(r) for r in records])
        folds = min(self.folds, len(set(groups)))
        if len(set(groups)) < 3:  # each fold's fit needs two tasks: too little to calibrate, keep the raw spread
            return
        resid, sd, cells, rel_sd = [], [], [], []
        for train, test in GroupKFold(n_splits=folds).split(records, groups=groups):
            sub = Surrogate(self.members, self.hidden, self.epochs, calibrate=False, seed=self.seed).fit([records[i] for i in train])
            held = [records[i] for i in test]
            x = sub._x([r.profile for r in held], [(r.method, r.hyperparameters, effective_max_length(r, r.profile)) for r in held])
            mean, std = sub._moments(x)
            rel_sd.append(np.sqrt(sub._forward(x)[2].mean(0)))
            y = np.stack([targets(r) for r in held])
            resid.append(y - mean)
            sd.append(std)
            cells += [cell_key(r) for r in held]
        resid, sd, rel_sd = np.concatenate(resid), np.concatenate(sd), np.concatenate(rel_sd)
        cells = np.array(cells)
        for t in range(len(TARGETS)):
            ok = ~np.isnan(resid[:, t])
            if ok.sum() < 10:
                continue
            self.scale[t] = float(np.quantile(np.abs(resid[ok, t]) / sd[ok, t], 0.9) / Z90)
            offsets = {c: resid[ok & (cells == c), t].mean() for c in set(cells[ok])}
            within = np.array([resid[i, t] - offsets[cells[i]] for i in np.flatnonzero(ok)])
            self.noise_var[t] = float(max(within.var() * ok.sum() / max(1, ok.sum() - len(offsets)), 1e-8))  # cell means removed: unbias
            if t == 0:  # how far runs of one task scatter around its level, against the predicted relative noise
                self.relative_scale[0] = float(np.sqrt(np.mean(within**2) / np.mean(rel_sd[np.flatnonzero(ok)] ** 2)))
            self.task_var[t] = float(max(np.var(list(offsets.values())) - self.noise_var[t] / max(1.0, ok.sum() / len(offsets)), 1e-8))

    # --- prediction ----------------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per member: means and variances of (accuracy, log s, log MB), and the variance of the relative part of
        accuracy alone (the run noise that differs between candidates of one task)."""
        with torch.no_grad():
            mu, logvar = self.net(torch.from_numpy((x - self.x_mean) / self.x_std))
        mu = mu.numpy() * self.y_std + self.y_mean
        var = np.exp(logvar.numpy()) * self.y_std**2
        accuracy, accuracy_var = mu[..., 0] + mu[..., 3], var[..., 0] + var[..., 3]
        return np.stack([accuracy, mu[..., 1], mu[..., 2]], -1), np.stack([accuracy_var, var[..., 1], var[..., 2]], -1), var[..., 0]

    def _moments(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, var, _ = self._forward(x)
        return mu.mean(0), np.sqrt(var.mean(0) + mu.var(0))

    @single_threaded
    def predict(self, profile: dict, candidates: list[Candidate], observed: list[Experience] | None = None, draws: int = 2000) -> Prediction:
        if self.net is None:
            raise ValueError("Surrogate is not fitted")
        profile = profile_dict(profile)
        rows = [(c.method, c.hyperparameters, effective_max_length(c.hyperparameters, profile)) for c in candidates]
        mu, var, relative_var = self._forward(self._x([profile] * len(rows), rows))
        offset, shrink = self._condition(profile, observed or [])
        mu = mu + offset
        mean = mu.mean(0)
        sd = np.sqrt((var.mean(0) + mu.var(0)) * shrink) * self.scale
        low, high = mean - Z90 * sd, mean + Z90 * sd
        # joint draws: a member, then run noise around its mean (the members' disagreement is shared by all
        # candidates of one draw, so a common shift does not change which is best)
        rng = np.random.default_rng(self.seed)
        k = rng.integers(0, mu.shape[0], draws)
        noise = rng.standard_normal((draws, len(rows))) * np.sqrt(relative_var[k]) * self.relative_scale[0]
        samples = mu[k, :, 0] + noise
        natural = [lambda a: np.clip(a, 0.0, 1.0), np.exp, np.exp]
        return Prediction(
            mean=np.stack([natural[t](mean[:, t]) for t in range(3)], 1),
            low=np.stack([natural[t](low[:, t]) for t in range(3)], 1),
            high=np.stack([natural[t](high[:, t]) for t in range(3)], 1),
            samples=samples,
        )

    def _condition(self, profile: dict, observed: list[Experience]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean of the task's offset from its observed runs, and the factor by which the variance
        shrinks (conjugate normal update with the held-out task and noise variances)."""
        observed = [r for r in observed if usable(r)]
        if not observed:
            return np.zeros(len(TARGETS)), np.ones(len(TARGETS))
        x = self._x([profile] * len(observed), [(r.method, r.hyperparameters, effective_max_length(r, profile)) for r in observed])
        mean, _ = self._moments(x)
        resid = np.stack([targets(r) for r in observed]) - mean
        n = (~np.isnan(resid)).sum(0)
        r = np.where(n > 0, np.nansum(resid, 0) / np.maximum(n, 1), 0.0)
        gain = n * self.task_var / (n * self.task_var + self.noise_var)
        post_var = self.task_var * self.noise_var / (n * self.task_var + self.noise_var)
        shrink = (post_var + self.noise_var) / (self.task_var + self.noise_var)
        return gain * r, np.minimum(shrink, 1.0)

    # --- persistence ---------------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, emb_meta = self.embedder.state()
        tensors = {f"embedder.{k}": v for k, v in tensors.items()}
        tensors.update({f"net.{k}": v for k, v in self.net.state_dict().items()})
        for name in ("x_mean", "x_std", "y_mean", "y_std", "scale", "task_var", "noise_var", "relative_scale"):
            tensors[name] = torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float32))
        meta = {"members": self.members, "hidden": self.hidden, "epochs": self.epochs, "folds": self.folds, "seed": self.seed,
                "methods": self.encoder.methods, "features": self.encoder.names, "n_records": self.n_records, "embedder": emb_meta}  # fmt: skip
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> Surrogate:
        embedder = TaskEmbedder.from_state({k[len("embedder."):]: v for k, v in tensors.items() if k.startswith("embedder.")}, meta["embedder"])
        self = cls(meta["members"], meta["hidden"], meta["epochs"], True, meta["folds"], meta["seed"], embedder)
        self.encoder = ConfigEncoder(meta["methods"])
        if self.encoder.names != meta["features"]:
            raise ValueError("saved surrogate was trained on another method zoo")
        for name in ("x_mean", "x_std", "y_mean", "y_std", "scale", "task_var", "noise_var", "relative_scale"):
            setattr(self, name, tensors[name].numpy())
        self.net = _Ensemble(self.members, len(self.x_mean), self.hidden, len(self.y_mean))
        self.net.load_state_dict({k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")})
        self.n_records = meta["n_records"]
        return self
