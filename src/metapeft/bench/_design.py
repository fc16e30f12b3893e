"""A benchmark design: which (task, train size, method, hyperparameters, seed) runs make up the meta-dataset.

Hyperparameters come from each method's search space through a scrambled Sobol sequence (Optuna's
``QMCSampler``), so that every method is seen across its whole space, not only at its defaults; a pass may
also ask for the defaults (the setting a user gets without search). Protocol-fixed values (steps, batch
size…) override both. The expansion is deterministic: the same design always yields the same runs, in the
same order, with the same keys.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._errors import MetapeftError
from ..methods import get_method


@dataclass
class Pass:
    sizes: list[int]
    config: str = "sobol"  # "defaults" or "sobol"
    repeats: int = 1  # Sobol points per (task, size, method)
    seeds: list[int] | None = None  # sample seeds (training sample, evaluation sample); default: the design's seeds
    tasks: list[str] | None = None  # default: the design's tasks
    train_seeds: list[int] | None = (
        None  # initialisation and data order; default: the sample seed (replicates: others)
    )
    fixed: dict[str, Any] | None = None  # this pass's protocol values over the design's (e.g. a longer step budget)
    eval_points: int | None = None  # learning-curve points; default: the design's
    methods: list[str] | None = None  # this pass's methods, among the design's; default: the design's


@dataclass
class Design:
    name: str
    methods: list[str]
    passes: list[Pass]
    model: str | None = None
    fixed: dict[str, Any] = field(default_factory=lambda: {"max_steps": 80, "batch_size": 16})
    eval_size: int = 300
    eval_points: int = 4
    final_eval_size: int | None = None  # the last evaluation's examples (None = eval_size, 0 = the whole test split)
    seeds: list[int] = field(default_factory=lambda: [0])
    sampler_seed: int = 0
    tasks: list[str] | None = None  # None = every task of the suite
    max_length_cap: int | None = None  # cap on the profile's automatic sequence length (cost control)
    pool_size: int = 0  # final evaluation also scores up to this many train rows no protocol sample uses (0 = none)
    backend: str = "torch"  # the framework every run trains with (mlx: causal-LM tasks and a causal LM as model)
    source: str = field(default="", repr=False, compare=False)  # the file it was loaded from, for error messages

    @classmethod
    def load(cls, path: str | Path) -> Design:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            data.pop("source", None)
            data["passes"] = [Pass(**p) for p in data["passes"]]
            design = cls(**data)
        except FileNotFoundError:
            raise MetapeftError(f"no design file at {path}") from None
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise MetapeftError(f"{path}: not a valid bench design ({exc})") from None
        design.source = str(path)
        design.validate(path)
        return design

    def validate(self, where: str | Path = "design") -> None:
        for m in self.methods:
            get_method(m)
        if self.eval_points < 1 or self.eval_size < 0 or (self.final_eval_size or 0) < 0:
            raise MetapeftError(f"{where}: eval_points must be >= 1, eval_size and final_eval_size >= 0")
        if self.pool_size < 0:
            raise MetapeftError(f"{where}: pool_size must be >= 0")
        from ..backends import BACKENDS

        if self.backend not in BACKENDS:
            raise MetapeftError(f"{where}: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if lacking := [m for m in self.methods if m not in BACKENDS[self.backend].methods and self.backend != "torch"]:
            raise MetapeftError(
                f"{where}: backend {self.backend} has no {', '.join(lacking)}; it has: "
                f"{', '.join(BACKENDS[self.backend].methods)}"
            )
        known = set().union(*({f.name for f in get_method(m).fields()} for m in self.methods))
        for i, fixed in [(None, self.fixed)] + [(i, p.fixed or {}) for i, p in enumerate(self.passes)]:
            if unknown := set(fixed) - known:
                which = "'fixed'" if i is None else f"pass {i}'s 'fixed'"
                raise MetapeftError(f"{where}: {which} names unknown hyperparameters: {', '.join(sorted(unknown))}")
        for i, p in enumerate(self.passes):
            if p.methods is not None and (not p.methods or set(p.methods) - set(self.methods)):
                raise MetapeftError(
                    f"{where}: pass {i}'s 'methods' must be a non-empty subset of the design's methods"
                )
            if (
                p.config not in ("defaults", "sobol")
                or p.repeats < 1
                or not p.sizes
                or min(p.sizes) < 2
                or (p.eval_points or 1) < 1
            ):
                raise MetapeftError(
                    f"{where}: pass {i} needs config 'defaults' or 'sobol', repeats >= 1, train sizes >= 2 "
                    "and eval_points >= 1"
                )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunSpec:
    key: str  # unique and stable: design/task/size/method/config/seed (seed "StT" when the training seed differs)
    task: str
    size: int
    method: str
    config_id: str
    seed: int  # the sample seed: training sample and evaluation sample
    hyperparameters: dict[str, Any]
    train_seed: int | None = None  # initialisation and data order (None: the sample seed)
    eval_points: int = 4


def expand(design: Design, task_names: list[str]) -> list[RunSpec]:
    """All runs of ``design`` over ``task_names``, in execution order: pass by pass, size by size, then task by
    task, so that any finished prefix covers every task at the sizes reached."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    named = set(design.tasks or ()).union(*(p.tasks or () for p in design.passes))
    if missing := sorted(named - set(task_names)):
        where = design.source or f"design {design.name!r}"
        raise MetapeftError(
            f"{where} names tasks the suite does not have: {', '.join(missing)}; fix its 'tasks' (the suite "
            f"has {len(task_names)} tasks)"
        )
    tasks = [t for t in task_names if design.tasks is None or t in design.tasks]
    studies = {}
    for m in design.methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # QMCSampler is marked experimental
            sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=design.sampler_seed)
        studies[m] = optuna.create_study(sampler=sampler)
    runs = []
    for p_index, p in enumerate(design.passes):
        for size in p.sizes:
            for task in [t for t in tasks if p.tasks is None or t in p.tasks]:
                fixed = {**design.fixed, **(p.fixed or {})}
                for method in p.methods or design.methods:
                    spec = get_method(method)
                    space = {k: v for k, v in spec.search_space().items() if k not in fixed}
                    configs = [("default", {})] if p.config == "defaults" else []
                    if p.config == "sobol":
                        for r in range(p.repeats):
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                params = studies[method].ask(space).params
                            configs.append((f"p{p_index}s{r}", params))
                    # Sobol points depend on the order of all earlier draws; the key carries a hash of the values so
                    # that a changed expansion (tasks added or reordered) can never file other settings under an old
                    # key.
                    for config_id, params in configs:
                        hyperparameters = spec.make_config({**params, **_fixed_for(spec, fixed)}).as_dict()
                        if config_id != "default":
                            config_id += (
                                "-"
                                + hashlib.sha256(json.dumps(hyperparameters, sort_keys=True).encode()).hexdigest()[:8]
                            )
                        elif p.fixed:  # defaults under another protocol (e.g. budget) are another configuration
                            config_id += "-" + "-".join(f"{k}{v}" for k, v in sorted(p.fixed.items()))
                        for seed in p.seeds or design.seeds:
                            for train_seed in p.train_seeds or [seed]:
                                run_seed = str(seed) if train_seed == seed else f"{seed}t{train_seed}"
                                key = f"{design.name}/{task}/{size}/{method}/{config_id}/{run_seed}"
                                runs.append(
                                    RunSpec(
                                        key,
                                        task,
                                        size,
                                        method,
                                        config_id,
                                        seed,
                                        hyperparameters,
                                        train_seed,
                                        p.eval_points or design.eval_points,
                                    )
                                )
    return runs


def _fixed_for(spec, fixed: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in spec.fields()}
    return {k: v for k, v in fixed.items() if k in names}


POOL_SIZES = (64, 256, 1024)  # the protocol's training-set sizes…
POOL_SEEDS = (0, 1)  # …and sample seeds: a pool row is in none of these samples


def scoring_pool(task, size: int, seed: int, cap: int):
    """Rows of ``task``'s train file that no protocol sample (:data:`POOL_SIZES` × :data:`POOL_SEEDS`, and the
    run's own ``size``/``seed``) trains on: up to ``cap`` of them, the same rows for every run of the task that
    the protocol covers, so that runs can be compared on them pairwise. Returns ``(split, pool_id)``, the id a
    hash of the rows' indices (runs with the same id were scored on the same rows)."""
    import numpy as np

    from ..tasks import stratified_indices

    n = len(task.train)
    used = np.zeros(n, dtype=bool)
    for s in {*POOL_SIZES, size}:
        for sd in {*POOL_SEEDS, seed}:
            if s < n:
                used[stratified_indices(task.train.labels, s, sd)] = True
            else:
                used[:] = True
    free = np.flatnonzero(~used)
    if len(free) > cap:
        free = np.sort(free[stratified_indices([task.train.labels[i] for i in free], cap, 0)])
    pool_id = hashlib.sha256(free.astype(np.int64).tobytes()).hexdigest()[:12]
    return task.train.select(free), pool_id
