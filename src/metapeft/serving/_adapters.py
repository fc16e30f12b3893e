"""Trained classifiers (adapter + head) as MLflow pyfunc models: ``mlflow.pyfunc.load_model(uri).predict(texts)``
returns labels, and ``mlflow models serve`` serves them. Logged as code (``_classifier_code.py``), never pickled;
the weights are the run folder ``save_classifier`` wrote (safetensors)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

ARTIFACT_PATH = "model"


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a saved classifier: texts in, labels out."""

    def load_context(self, context) -> None:
        from ..training import load_classifier

        self.classifier = load_classifier(context.artifacts["classifier"])

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """The label of each text (a sentence-pair task takes ``"text [SEP] pair"``, as its profile joins them).

        Args:
            context: MLflow's model context (unused after loading).
            model_input: Texts.
            params: Unused.

        Returns:
            One label name per text.
        """
        return [str(label) for label in self.classifier.predict(list(model_input))]


def register_classifier(
    name: str,
    run_id: str,
    folder: str | Path,
    *,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    tracker=None,
):
    """Log the classifier saved in ``folder`` as a pyfunc model in run ``run_id`` (under ``artifact_path``) and
    register it as a new version of ``name``. Returns the model version."""
    from ..tracking import MLflowTracker

    code = Path(__file__).with_name("_classifier_code.py")
    artifacts = {"classifier": str(folder)}
    return log_and_register(
        tracker or MLflowTracker(),
        name,
        run_id,
        ARTIFACT_PATH,
        code,
        artifacts,
        ["metapeft"],
        tags=tags,
        description=description,
    )


def log_and_register(
    tracker,
    name: str,
    run_id: str,
    artifact_path: str,
    code: Path,
    artifacts: dict[str, str],
    pip_requirements: list[str],
    *,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    model_description: str | None = None,
):
    """Log a models-from-code pyfunc model (``code`` is the model: no pickle of an instance) with ``artifacts`` in
    run ``run_id`` (under ``artifact_path``) and register it as a new version of ``name``. Returns the model version.

    The registry resolves a version's ``models:/m-…`` source through MLflow's global tracking URI, so the version is
    created inside :meth:`MLflowTracker.fluent` too."""
    with tracker.fluent():
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Failed to resolve installed pip version")
            info = mlflow.pyfunc.log_model(
                name=artifact_path, python_model=str(code), artifacts=artifacts, pip_requirements=pip_requirements
            )
        try:
            tracker.client.create_registered_model(name, description=model_description)
        except Exception:  # exists already: add a version
            pass
        tags = {k: str(v)[:5000] for k, v in (tags or {}).items()}
        return tracker.client.create_model_version(
            name, info.model_uri, run_id=run_id, tags=tags, description=description
        )
