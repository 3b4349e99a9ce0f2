"""MLflow "model from code" entry: the file `mlflow.pyfunc.log_model(python_model=<this path>)` logs.

MLflow runs this file when it loads the model, instead of unpickling a Python object.
"""
import mlflow

from ebbtide.model.predictor import EbbtidePyfunc

mlflow.models.set_model(EbbtidePyfunc())
