"""The script MLflow runs to build medcl's logged model ("models from code"; not imported by medcl).

It is copied into every logged model; see :mod:`medcl.inference.mlflow_model`.
"""

import mlflow.models

from medcl.inference.mlflow_model import SegmentationModel

mlflow.models.set_model(SegmentationModel())
