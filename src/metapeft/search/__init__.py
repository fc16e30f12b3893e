"""Search over methods and hyperparameters: ``tune`` (Optuna, warm-started and guided by the meta-learner) and
``autotune`` (profile → recommend → tune → train the pick → register it)."""

from ._autotune import AutotuneResult, autotune
from ._sampler import MetaSampler
from ._space import joint_space
from ._tune import SAMPLERS, TrialResult, TuneResult, tune

__all__ = ["SAMPLERS", "AutotuneResult", "autotune", "MetaSampler", "TrialResult", "TuneResult", "joint_space", "tune"]
