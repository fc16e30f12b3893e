"""The method zoo: every fine-tuning method metapeft can train, with its hyperparameter space.

Importing this package registers the built-in methods; ``register_method`` adds more.
"""

# Registration order is the order users see: the five methods users asked for first (isort: off keeps it).
# isort: off
from . import lora, adalora, prompt_learning, ia3, loha, reference  # noqa: F401  (import registers)

# isort: on
from ._base import (
    BUDGET_FIELDS,
    DEFAULT_STEPS,
    TARGET_PRESETS,
    Method,
    MethodConfig,
    default_steps,
    get_method,
    hp,
    list_methods,
    register_method,
    target_modules,
    with_default_steps,
)

__all__ = [
    "BUDGET_FIELDS",
    "DEFAULT_STEPS",
    "TARGET_PRESETS",
    "Method",
    "MethodConfig",
    "default_steps",
    "get_method",
    "hp",
    "list_methods",
    "register_method",
    "target_modules",
    "with_default_steps",
]
