"""Fine-tuning: the engine that trains any zoo method and measures it."""

from ._engine import FitResult, build_classifier, evaluate, fit, pack_outcomes, unpack_outcomes
from ._model import SavedClassifier, TextClassifier, load_classifier
from ._run import TrainResult, train

__all__ = ["FitResult", "SavedClassifier", "TextClassifier", "TrainResult", "build_classifier", "evaluate", "fit", "load_classifier", "pack_outcomes", "train", "unpack_outcomes"]
