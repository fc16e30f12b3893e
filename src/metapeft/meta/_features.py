"""From experience records to numbers: task features, configuration features and targets.

The meta-learners see a run as (task profile, method, hyperparameters) → (accuracy, train time, peak memory).
Task features are fixed transforms of the profile (log sizes, ratios, the probe landmark…) plus the 384-d domain
vector; configuration features are the method one-hot and each hyperparameter scaled to [0, 1] within its
search range (log scale where the range is logarithmic), so a value means the same whatever the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from ..experience import Experience, measured_memory, measured_time
from ..methods import BUDGET_FIELDS, MethodConfig, default_steps, get_method, list_methods
from ..tasks import TaskProfile

TARGETS = ("accuracy", "train_time_s", "peak_memory_mb")
# the backends other than torch (the default), one indicator each: meta/ reads the name a run recorded, it never
# imports a backend; experience of one backend informs another only as far as the data shows them alike
OTHER_BACKENDS = ("mlx",)
PROFILE_FEATURES = (
    "log_size",
    "log_classes",
    "class_entropy",
    "log_imbalance",
    "log_length_p50",
    "log_length_p95",
    "pair",
    "type_token_ratio",
    "unk_rate",
    "probe_accuracy",
    "majority_accuracy",
    "complexity_score",
    "log_model_params",
    "model_layers",
    "log_hidden_size",
    "causal_lm",
    *(f"backend_{b}" for b in OTHER_BACKENDS),
)


def profile_dict(profile: TaskProfile | dict) -> dict:
    return profile.as_dict() if isinstance(profile, TaskProfile) else profile


def profile_vector(profile: TaskProfile | dict) -> np.ndarray:
    """The hand-made task features, in the order of ``PROFILE_FEATURES``."""
    p = profile_dict(profile)
    model = p.get("model") or {}
    values = [
        math.log2(max(2, p["dataset_size"])),
        math.log2(max(2, p.get("num_classes", 2))),
        p.get("class_entropy", 1.0),
        math.log(max(1.0, p.get("imbalance_ratio", 1.0))),
        math.log2(max(1.0, p.get("token_length_p50", 16))),
        math.log2(max(1.0, p.get("token_length_p95", 16))),
        1.0 if p.get("task_type") == "pair" else 0.0,
        p.get("type_token_ratio", 0.0),
        p.get("unk_rate", 0.0),
        p.get("probe_accuracy", 0.5),
        p.get("majority_accuracy", 0.5),
        p.get("complexity_score", 0.5),
        math.log10(max(1, model.get("num_parameters") or 1)),
        float(model.get("num_layers") or 0),
        math.log2(max(1, model.get("hidden_size") or 1)),
        1.0 if p.get("task_type") == "causal_lm" else 0.0,
        *(1.0 if p.get("backend", "torch") == b else 0.0 for b in OTHER_BACKENDS),
    ]
    return np.asarray(values, dtype=np.float32)


def domain_vector(profile: TaskProfile | dict) -> np.ndarray:
    return np.asarray(profile_dict(profile).get("domain_vector") or [], dtype=np.float32)


COST_FREE_FIELDS = (
    "learning_rate",
    "head_learning_rate",
    "warmup_ratio",
    "weight_decay",
    "lora_alpha",
    "alpha",
    "tinit_ratio",
    "tfinal_ratio",
    "prompt_init",
    "max_steps",  # time is learned per step (the total is steps × it), and memory does not grow with the steps
)


@dataclass(frozen=True)
class _Slot:
    method: str | None  # None: a field every method shares
    name: str
    dist: Any


class ConfigEncoder:
    """Method one-hot plus one slot per hyperparameter (shared fields once, method-specific fields per method)."""

    def __init__(self, methods: list[str] | None = None):
        self.methods = methods or [m.name for m in list_methods()]
        shared = None
        for name in self.methods:
            names = set(get_method(name).search_space())
            shared = names if shared is None else shared & names
        self.shared = sorted(shared or [])
        self.slots: list[_Slot] = [_Slot(None, n, get_method(self.methods[0]).search_space()[n]) for n in self.shared]
        for name in self.methods:
            for field, dist in get_method(name).search_space().items():
                if field not in self.shared:
                    self.slots.append(_Slot(name, field, dist))
        self.defaults = {m: get_method(m).defaults().as_dict() for m in self.methods}  # what a missing setting means
        self.names = [f"method={m}" for m in self.methods] + ["log_max_length"]
        for s in self.slots:
            prefix = f"{s.method}." if s.method else ""
            if isinstance(s.dist, CategoricalDistribution):
                self.names += [f"{prefix}{s.name}={c}" for c in s.dist.choices]
            else:
                self.names.append(prefix + s.name)
        self._encoded: dict[tuple, np.ndarray] = {}  # recommend encodes the same ~800 candidates on every call

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def budget_columns(self) -> list[int]:
        """Columns that describe the conditions of a run (steps, batch size, sequence length), not a choice among
        configurations: the task's level depends on them."""
        return [i for i, n in enumerate(self.names) if n.split("=")[0] in ("log_max_length", *BUDGET_FIELDS)]

    @property
    def cost_free_columns(self) -> list[int]:
        """Columns of settings that change what training learns but not what a step costs (learning rates, schedule,
        regularisation, scaling, initialisation, the number of steps): time per step and memory are read with them at
        their mean, so the surrogate cannot invent cost differences between settings that have none."""
        return [
            i
            for i, n in enumerate(self.names)
            if n.split("=")[0].split(".")[-1] in COST_FREE_FIELDS or n.endswith("dropout")
        ]

    def encode(self, method: str, hyperparameters: dict[str, Any], max_length: int) -> np.ndarray:
        try:
            key = (method, max_length, *sorted(hyperparameters.items()))
            hash(key)
        except TypeError:  # an unhashable setting (a list of modules): encode it each time
            return self._encode(method, hyperparameters, max_length)
        if key not in self._encoded:
            if len(self._encoded) > 100_000:
                self._encoded.clear()
            self._encoded[key] = self._encode(method, hyperparameters, max_length)
        return self._encoded[key]

    def _encode(self, method: str, hyperparameters: dict[str, Any], max_length: int) -> np.ndarray:
        out: list[float] = [1.0 if method == m else 0.0 for m in self.methods]
        out.append(math.log2(max(1, max_length)) / 8.0)
        for s in self.slots:
            active = s.method is None or s.method == method
            value = hyperparameters.get(s.name, self.defaults[method].get(s.name)) if active else None
            if isinstance(s.dist, CategoricalDistribution):
                out += [1.0 if active and value == c else 0.0 for c in s.dist.choices]
            else:
                out.append(_scale(value, s.dist) if active and value is not None else 0.0)
        return np.asarray(out, dtype=np.float32)


def _scale(value: float, dist) -> float:
    low, high = float(dist.low), float(dist.high)
    value = float(value)
    if dist.log:
        x = (math.log(max(value, 1e-12)) - math.log(low)) / (math.log(high) - math.log(low))
    else:
        x = (value - low) / (high - low) if high > low else 0.0
    return min(max(x, -0.5), 1.5)  # settings outside the searched range stay ordered but bounded


def effective_max_length(record_or_hp: Experience | dict, profile: dict) -> int:
    """Tokens per example the run used (or will use): the setting, else the profile's rule."""
    if isinstance(record_or_hp, Experience):
        if record_or_hp.metrics.get("max_length"):
            return int(record_or_hp.metrics["max_length"])
        hp = record_or_hp.hyperparameters
    else:
        hp = record_or_hp
    return int(hp.get("max_length") or profile.get("sequence_length") or 128)


def budgeted(hyperparameters: dict[str, Any], profile: dict) -> dict[str, Any]:
    """A configuration to predict with its step budget resolved as training will resolve it: a missing or 0
    ``max_steps`` is :func:`~metapeft.methods.default_steps` of the task's training set."""
    if hyperparameters.get("max_steps"):
        return hyperparameters
    batch = hyperparameters.get("batch_size") or MethodConfig.batch_size
    return {**hyperparameters, "max_steps": default_steps(int(profile.get("dataset_size") or 0), batch)}


def steps_of(hyperparameters: dict, metrics: dict | None = None) -> float:
    """Optimisation steps a run made (fewer than ``max_steps`` when a time budget stopped it) or will make."""
    return float(max(1, (metrics or {}).get("steps") or hyperparameters.get("max_steps") or 1))


def targets(record: Experience) -> np.ndarray:
    """Accuracy, log train time *per step* and log peak memory (NaN where the run did not measure one). Time is
    steps × a cost per step that the task, method and settings decide; learned as a total, it could not leave the
    experience's budgets (the prior then had only 80 steps: 400 steps were predicted to cost what 80 do). Time only
    where the run had its cores to itself (``measured_time``), memory only where it was measured comparably
    (``measured_memory``)."""
    m = record.metrics

    def log_or_nan(v) -> float:
        return math.log(v) if isinstance(v, (int, float)) and v > 0 else math.nan

    out = np.asarray(
        [float(m["accuracy"]), log_or_nan(measured_time(record)), log_or_nan(measured_memory(m))], dtype=np.float32
    )
    out[1] -= np.log(steps_of(record.hyperparameters, m))
    return out


def at_defaults(method: str, hyperparameters: dict[str, Any]) -> bool:
    """Whether a configuration keeps every searched setting of its method at the default (the budget — steps,
    batch size, sequence length — aside: it is the user's, not a choice)."""
    spec = get_method(method)
    defaults = spec.defaults().as_dict()
    searched = spec.search_space()
    return all(hyperparameters.get(k, v) == v for k, v in defaults.items() if k in searched and k not in BUDGET_FIELDS)
