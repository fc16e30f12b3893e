"""Task embeddings learned from experience: tasks on which the methods perform alike lie close together.

A *cell* is one task instance (a dataset at a train size, one profile fingerprint). Its performance vector holds
each method's best accuracy there, standardised within the cell so that only the methods' relative standing
counts, not how hard the task is. The network maps the task's profile features to a vector whose distances
reproduce the distances between performance vectors (a learned, nonlinear metric-MDS); it can therefore place a
new task, which has a profile but no runs yet, among the tasks that behave like it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._environment import single_threaded
from .._errors import MetapeftError
from ..experience import Experience, budget_key, cell_key, examples_seen, fingerprint_of, task_group, usable
from . import _nets
from ._features import PROFILE_FEATURES, at_defaults, domain_vector, profile_vector

DOMAIN_COMPONENTS = 8


@dataclass
class Cell:
    """What the experience says about one task instance."""

    key: str  # the data's fingerprint and the step budget (see cell_key)
    fingerprint: str  # the data's
    task: str  # task name with its size, e.g. sst2@64
    group: str  # the task whatever its size, e.g. sst2
    profile: dict
    scores: dict[str, float]  # method → best accuracy among its runs
    runs: int = 0
    others: dict[str, float] = field(default_factory=dict)  # method → best accuracy among its runs not at defaults
    seed: int | None = (
        None  # of its first run: a bench draws the task's sample with it (tells two samples of cr@64 apart)
    )
    budget: str = ""  # what its runs trained under apart from the data (see budget_key)
    seen: float | None = None  # the training examples that budget feeds (steps × batch size; see examples_seen)

    @property
    def best_method(self) -> str:
        return max(self.scores, key=self.scores.get)

    @property
    def best_accuracy(self) -> float:
        return max(self.scores.values())


def cells_of(records: list[Experience]) -> list[Cell]:
    cells: dict[str, Cell] = {}
    for r in records:
        if not usable(r):
            continue
        key = cell_key(r)
        cell = cells.setdefault(
            key,
            Cell(
                key,
                fingerprint_of(r),
                r.task_name,
                task_group(r),
                r.profile,
                {},
                seed=r.seed,
                budget=budget_key(r),
                seen=examples_seen(r),
            ),
        )
        cell.scores[r.method] = max(cell.scores.get(r.method, 0.0), float(r.metrics["accuracy"]))
        if not at_defaults(r.method, r.hyperparameters):
            cell.others[r.method] = max(cell.others.get(r.method, 0.0), float(r.metrics["accuracy"]))
        cell.runs += 1
    return list(cells.values())


def method_gaps(
    cells: list[Cell],
    size: float | None = None,
    bandwidth: float = 2.0,
    runs: str = "all",
    seen: float | None = None,
    seen_bandwidth: float = 0.5,
) -> dict[str, float]:
    """Per method, its mean gap (accuracy) to the best method over the task instances it was run on; with ``size``
    (training examples), instances weighted by a Gaussian kernel of ``bandwidth`` octaves over log2 size; with
    ``seen`` (steps × batch size), also by one of ``seen_bandwidth`` octaves over the examples their runs trained on
    (methods that lead after 80 steps need not lead after 320); with ``runs="others"``, only the runs at settings
    other than the methods' defaults count (instances with fewer than two such methods go)."""
    gaps: dict[str, list[tuple[float, float]]] = {}
    for c in cells:
        scores = c.others if runs == "others" else c.scores
        if len(scores) < 2:
            continue
        weight = 1.0
        if size is not None:
            octaves = np.log2(max(1, c.profile.get("dataset_size") or 1)) - np.log2(max(1.0, size))
            weight = float(np.exp(-0.5 * (octaves / bandwidth) ** 2))
        if seen is not None and c.seen:
            octaves = np.log2(c.seen) - np.log2(max(1.0, seen))
            weight *= float(np.exp(-0.5 * (octaves / seen_bandwidth) ** 2))
        best = max(scores.values())
        for m, s in scores.items():
            gaps.setdefault(m, []).append((best - s, weight))
    return {m: float(np.average([g for g, _ in v], weights=[w for _, w in v])) for m, v in gaps.items()}


@dataclass
class TaskFeaturizer:
    """Standardised profile features plus the domain vector's leading principal components (fit on past tasks).

    PCA comes from scikit-learn; only its mean and components are kept, so the state saves as plain arrays."""

    mean: np.ndarray = field(default_factory=lambda: np.zeros(len(PROFILE_FEATURES), np.float32))
    std: np.ndarray = field(default_factory=lambda: np.ones(len(PROFILE_FEATURES), np.float32))
    domain_mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    domain_components: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def fit(self, profiles: list[dict]) -> TaskFeaturizer:
        from sklearn.decomposition import PCA

        x = np.stack([profile_vector(p) for p in profiles])
        self.mean, self.std = x.mean(0), x.std(0)
        self.std[self.std < 1e-6] = 1.0  # a feature constant over past tasks carries no information
        d = np.stack([domain_vector(p) for p in profiles])
        # n centred points span at most n - 1 directions; a direction without variance would be scaled up by ~1e5
        # below and turn rounding noise into a feature
        pca = PCA(n_components=min(DOMAIN_COMPONENTS, max(1, len(d) - 1), d.shape[1]), random_state=0).fit(d)
        keep = pca.explained_variance_ > 1e-6 * max(float(pca.explained_variance_.max()), 1e-12)
        self.domain_mean = pca.mean_.astype(np.float32)
        # scaled to unit variance, like the other features
        self.domain_components = (pca.components_[keep] / np.sqrt(pca.explained_variance_[keep])[:, None]).astype(
            np.float32
        )
        return self

    @property
    def dim(self) -> int:
        return len(self.mean) + DOMAIN_COMPONENTS

    def transform(self, profiles: list[dict]) -> np.ndarray:
        # clipped: a task far outside the experience (say 100x its largest size) should not push the networks into
        # regions they never saw
        x = np.clip((np.stack([profile_vector(p) for p in profiles]) - self.mean) / self.std, -3, 3)
        d = np.stack([domain_vector(p) for p in profiles])
        if d.shape[1] != self.domain_mean.shape[0]:
            raise MetapeftError(
                f"task profile: domain_vector has {d.shape[1]} numbers where this selector's profiles have "
                f"{self.domain_mean.shape[0]}; profile the task with the same base model (`metapeft profile`)"
            )
        dom = (d - self.domain_mean) @ self.domain_components.T
        dom = np.pad(dom, ((0, 0), (0, DOMAIN_COMPONENTS - dom.shape[1])))
        return np.concatenate([x, np.clip(dom, -5, 5)], axis=1).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "mean": self.mean,
            "std": self.std,
            "domain_mean": self.domain_mean,
            "domain_components": self.domain_components,
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> TaskFeaturizer:
        return cls(**{k: np.asarray(v, np.float32) for k, v in state.items()})


def performance_distances(cells: list[Cell], methods: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise distances between the cells' standardised performance vectors, and which pairs share >= 3
    methods and a step budget (others carry too little to compare; and the same data trained for 80 and for 320
    steps ranks the methods differently, which an embedding of the data alone cannot tell apart)."""
    v = np.full((len(cells), len(methods)), np.nan)
    for i, c in enumerate(cells):
        for j, m in enumerate(methods):
            if m in c.scores:
                v[i, j] = c.scores[m]
    mu = np.nanmean(v, axis=1, keepdims=True)
    sd = np.nanstd(v, axis=1, keepdims=True)
    z = (v - mu) / np.where(sd > 1e-6, sd, 1.0)
    present = ~np.isnan(z)
    z = np.nan_to_num(z)
    shared = present.astype(float) @ present.T.astype(float)
    sq = (z**2 * present) @ present.T + present @ (z**2 * present).T - 2 * (z * present) @ (z * present).T
    dist = np.sqrt(np.maximum(sq, 0) / np.maximum(shared, 1))
    budget = np.array([c.budget for c in cells])
    valid = (shared >= 3) & (budget[:, None] == budget[None])
    np.fill_diagonal(valid, False)
    return dist.astype(np.float32), valid


class TaskEmbedder:
    """Profile → task vector, trained so that embedding distances match performance distances.

    Lifecycle: ``fit(experiences)`` learns the featurizer and the network from scratch; ``partial_fit`` continues
    training the same network on the current experience (old and new cells together, so that what was learned
    is refreshed rather than forgotten) when runs arrive; ``predict(profiles)`` embeds any task, seen or not.
    """

    def __init__(self, dim: int = 8, epochs: int = 300, seed: int = 0):
        self.dim, self.epochs, self.seed = dim, epochs, seed
        self.featurizer = TaskFeaturizer()
        self.weights: _nets.Weights | None = None  # the network's, as numpy arrays (see _nets)
        self.methods: list[str] = []
        self.stress_: float | None = None

    @single_threaded
    def fit(self, records: list[Experience]) -> TaskEmbedder:
        cells = cells_of(records)
        if len(cells) < 2:
            raise ValueError("the task embedding needs finished runs on at least 2 task instances")
        import torch

        self.featurizer = TaskFeaturizer().fit([c.profile for c in cells])
        torch.manual_seed(self.seed)
        self.weights = _nets.weights_of(_nets.embedding_net(self.featurizer.dim, self.dim))
        self.methods = sorted({m for c in cells for m in c.scores})
        return self._train(cells, self.epochs)

    @single_threaded
    def partial_fit(self, records: list[Experience], epochs: int | None = None) -> TaskEmbedder:
        if self.weights is None:
            return self.fit(records)
        cells = cells_of(records)
        self.methods = sorted(set(self.methods) | {m for c in cells for m in c.scores})
        return self._train(cells, epochs or max(50, self.epochs // 4))

    def _train(self, cells: list[Cell], epochs: int) -> TaskEmbedder:
        import torch

        target, valid = performance_distances(cells, self.methods)
        x = torch.from_numpy(self.featurizer.transform([c.profile for c in cells]))
        if not valid.any():
            self.stress_ = None
            return self
        scale = float(target[valid].mean()) or 1.0
        t = torch.from_numpy(target / scale)
        mask = torch.from_numpy(valid)
        net = _nets.embedding_net(self.featurizer.dim, self.dim, self.weights)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(epochs):
            z = net(x)
            d = torch.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1) + 1e-9)
            loss = ((d - t)[mask] ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.stress_ = float(loss.detach())
        self.weights = _nets.weights_of(net)
        return self

    def predict(self, profiles: list[dict]) -> np.ndarray:
        if self.weights is None:
            raise ValueError("TaskEmbedder is not fitted")
        return _nets.embed(self.weights, self.featurizer.transform(profiles))

    # --- persistence (safetensors-friendly: plain arrays plus JSON metadata) ---------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {f"featurizer.{k}": v for k, v in self.featurizer.state().items()}
        arrays.update({f"net.{k}": v for k, v in self.weights.items()})
        return arrays, {
            "dim": self.dim,
            "epochs": self.epochs,
            "seed": self.seed,
            "methods": self.methods,
            "stress": self.stress_,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict) -> TaskEmbedder:
        self = cls(meta["dim"], meta["epochs"], meta["seed"])
        self.methods, self.stress_ = meta["methods"], meta["stress"]
        self.featurizer = TaskFeaturizer.from_state(
            {k[len("featurizer.") :]: v for k, v in arrays.items() if k.startswith("featurizer.")}
        )
        self.weights = {k[len("net.") :]: v for k, v in arrays.items() if k.startswith("net.")}
        return self
