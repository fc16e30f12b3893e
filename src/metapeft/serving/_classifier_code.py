"""A trained classifier's pyfunc model as code (MLflow's "models from code"): nothing is pickled."""

import mlflow.models

from metapeft.serving._adapters import ClassifierModel

mlflow.models.set_model(ClassifierModel())
