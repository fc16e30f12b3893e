"""metapeft: choose and configure parameter-efficient fine-tuning from past fine-tuning experience.

The public surface is re-exported here and imported lazily (PEP 562), so that ``import metapeft`` and the CLI's
``--version`` stay instant while torch and transformers load only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load_task": "metapeft.tasks",
    "load_suite": "metapeft.tasks",
    "profile_task": "metapeft.tasks",
    "Task": "metapeft.tasks",
    "TaskProfile": "metapeft.tasks",
    "get_method": "metapeft.methods",
    "list_methods": "metapeft.methods",
    "register_method": "metapeft.methods",
    "Method": "metapeft.methods",
    "MethodConfig": "metapeft.methods",
    "train": "metapeft.training",
    "load_classifier": "metapeft.training",
    "TrainResult": "metapeft.training",
    "RunConfig": "metapeft.training",
    "TrainerCallback": "metapeft.training",
    "tune": "metapeft.search",
    "autotune": "metapeft.search",
    "SearchConfig": "metapeft.search",
    "Experience": "metapeft.experience",
    "ExperienceStore": "metapeft.experience",
    "MetaPEFT": "metapeft.meta",
    "MethodRecommendation": "metapeft.meta",
    "MetapeftError": "metapeft._errors",
    "adapt": "metapeft.fewshot",
    "meta_train": "metapeft.fewshot",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from ._errors import MetapeftError
    from .experience import Experience, ExperienceStore
    from .fewshot import adapt, meta_train
    from .meta import MetaPEFT, MethodRecommendation
    from .methods import Method, MethodConfig, get_method, list_methods, register_method
    from .search import SearchConfig, autotune, tune
    from .tasks import Task, TaskProfile, load_suite, load_task, profile_task
    from .training import RunConfig, TrainerCallback, TrainResult, load_classifier, train


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metapeft' has no attribute {name!r}")
