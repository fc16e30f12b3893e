"""Few-shot adaptation: a meta-learned PEFT initialisation that learns a new task from a handful of examples.

``meta_train`` meta-learns it (Reptile or first-order MAML over N-way K-shot episodes of a suite); ``adapt`` learns a
task from K examples per label starting from it, with a prototype head that works for any label set.
"""

from ._adapt import FEW_SHOT_MAX, AdaptResult, adapt, few_shot_size
from ._episodes import Episode, TaskConfig, few_shot_split, sample_episode
from ._init import default_init, load_init, read_card, save_init
from ._learner import FewShotModel, InnerLoop, ReptileLearner, StepResult
from ._train import MetaTrainConfig, MetaTrainResult, meta_train

__all__ = [
    "FEW_SHOT_MAX",
    "AdaptResult",
    "Episode",
    "FewShotModel",
    "InnerLoop",
    "MetaTrainConfig",
    "MetaTrainResult",
    "ReptileLearner",
    "StepResult",
    "TaskConfig",
    "adapt",
    "default_init",
    "few_shot_size",
    "few_shot_split",
    "load_init",
    "meta_train",
    "read_card",
    "sample_episode",
    "save_init",
]
