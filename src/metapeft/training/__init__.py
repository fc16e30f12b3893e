"""Fine-tuning: the engine that trains any zoo method and measures it."""

from ._callbacks import Progress, Stop, StopWhen, Switch, SwitchAt, TimeBudget, TrainerCallback, TrainerState
from ._causal import backend_methods
from ._clock import StepClock
from ._config import RunConfig
from ._engine import Batches, FitResult, build_classifier, evaluate, fit
from ._forgetting import LinearProbe
from ._memory import MemoryCount
from ._model import SavedClassifier, TextClassifier, load_classifier, save_classifier
from ._run import TrainResult, train, usable_output
from ._switching import SwitchController, SwitchPolicy

__all__ = [
    "Batches",
    "FitResult",
    "LinearProbe",
    "backend_methods",
    "MemoryCount",
    "Progress",
    "RunConfig",
    "SavedClassifier",
    "StepClock",
    "Stop",
    "StopWhen",
    "Switch",
    "SwitchAt",
    "SwitchController",
    "SwitchPolicy",
    "TextClassifier",
    "TimeBudget",
    "TrainResult",
    "TrainerCallback",
    "TrainerState",
    "build_classifier",
    "evaluate",
    "fit",
    "load_classifier",
    "save_classifier",
    "train",
    "usable_output",
]
