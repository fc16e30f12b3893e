"""Search over methods and hyperparameters: ``tune`` (Optuna, warm-started and guided by the meta-learner) and
``autotune`` (profile → recommend → tune → train the pick → register it)."""

from ._autotune import AutotuneResult, autotune, decision_tags, register_decision, search_and_train
from ._config import OBJECTIVES, PREFERENCES, SAMPLERS, SearchConfig
from ._sampler import MetaSampler
from ._space import joint_space
from ._tune import TrialResult, TuneResult, switch_callbacks, tune

__all__ = [
    "OBJECTIVES",
    "PREFERENCES",
    "SAMPLERS",
    "AutotuneResult",
    "MetaSampler",
    "SearchConfig",
    "TrialResult",
    "TuneResult",
    "autotune",
    "joint_space",
    "switch_callbacks",
    "tune",
    "decision_tags",
    "register_decision",
    "search_and_train",
]
