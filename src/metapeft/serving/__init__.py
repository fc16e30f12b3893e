"""Serving the selector: as a versioned MLflow model (pyfunc, registry aliases) and over HTTP (``metapeft serve``)."""

from ._adapters import ClassifierModel, register_classifier
from ._app import SelectorHolder, ServeConfig, create_app
from ._retrain import RetrainResult, evaluate_challenger, promote, register_challenger, retrain
from ._selector import (
    CHALLENGER,
    CHAMPION,
    SELECTOR_NAME,
    SelectorModel,
    ensure_champion,
    load_selector,
    log_selector,
    selector_uri,
    version_tags,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "ClassifierModel",
    "SELECTOR_NAME",
    "RetrainResult",
    "SelectorHolder",
    "SelectorModel",
    "ServeConfig",
    "create_app",
    "ensure_champion",
    "load_selector",
    "log_selector",
    "register_classifier",
    "retrain",
    "selector_uri",
    "version_tags",
    "evaluate_challenger",
    "promote",
    "register_challenger",
]
