"""The joint search space over methods and their hyperparameters, flattened for Optuna.

Every method's hyperparameters get names of their own (``lora.r``, ``prefix_tuning.learning_rate``) beside one
``method`` choice, so the space is the same for every trial: Optuna's model-based samplers (GP, TPE's
multivariate mode) need a static space, and a setting means one thing whatever the method. A trial uses the
``method`` it drew and that method's values; the others ride along unused.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution

from ..methods import BUDGET_FIELDS, get_method


def joint_space(methods: list[str]) -> dict[str, BaseDistribution]:
    space: dict[str, BaseDistribution] = {"method": CategoricalDistribution(methods)}
    for m in methods:
        for name, dist in get_method(m).search_space().items():
            if name not in BUDGET_FIELDS:
                space[f"{m}.{name}"] = dist
    return space


def to_config(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A trial's method and that method's hyperparameters."""
    method = params["method"]
    prefix = method + "."
    return method, {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def to_params(method: str, hyperparameters: dict[str, Any], space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Flat parameters for a configuration: its own values, every other method at its defaults (inside the space)."""
    params: dict[str, Any] = {"method": method}
    for name, dist in space.items():
        if name == "method":
            continue
        owner, field = name.split(".", 1)
        value = hyperparameters.get(field) if owner == method else None
        if value is None:
            value = getattr(get_method(owner).defaults(), field)
        params[name] = _inside(value, dist)
    return params


def _inside(value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return value if value in dist.choices else dist.choices[0]
    return type(dist.low)(min(max(value, dist.low), dist.high))
