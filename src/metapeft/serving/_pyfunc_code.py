"""The selector's pyfunc model as code (MLflow's "models from code"): logging it stores this file, not a pickle,
and loading it runs this file, which needs metapeft installed."""

import mlflow.models

from metapeft.serving._selector import SelectorModel

mlflow.models.set_model(SelectorModel())
