"""Meta-learning over the experience store: task embeddings, the performance surrogate and recommendation.

Every meta-learner follows one protocol, as in scikit-learn: ``fit(experiences)`` learns from scratch,
``partial_fit(experiences)`` continues learning when runs arrive, ``predict(...)`` answers for any task, seen or
not. :class:`MetaPEFT` puts them together behind ``recommend``.
"""

from ._embedding import Cell, TaskEmbedder
from ._evaluate import Constraint, evaluate
from ._forecast import CurveForecaster, Forecast
from ._protocol import Selector, check_selector
from ._recommend import (
    MetaPEFT,
    MethodRecommendation,
    SettingCheck,
    SimilarTask,
    out_of_task_predictions,
    ship_prior,
    task_folds,
)
from ._surrogate import Candidate, Prediction, Surrogate

__all__ = [
    "Candidate",
    "Cell",
    "Constraint",
    "CurveForecaster",
    "Forecast",
    "MetaPEFT",
    "MethodRecommendation",
    "Prediction",
    "Selector",
    "SettingCheck",
    "SimilarTask",
    "Surrogate",
    "TaskEmbedder",
    "check_selector",
    "evaluate",
    "out_of_task_predictions",
    "ship_prior",
    "task_folds",
]
