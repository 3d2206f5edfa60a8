"""tlearn: transfer learning for image classification, from a folder of labelled images to a deployable model.

Example:
    >>> import tlearn
    >>> run = tlearn.train("data/", out="runs/first")  # doctest: +SKIP
    >>> clf = tlearn.load(run.model_path)  # doctest: +SKIP
    >>> clf.predict(["photo.jpg"], top_k=3)  # doctest: +SKIP

The names in `__all__` are the public API (reference: docs/api.md); everything else may change without notice.
They are imported on first use (PEP 562) because torch takes seconds to import and the cached-embedding path
never needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Where each public name lives; `__getattr__` imports the module on first use.
_EXPORTS = {
    # The front door
    "train": "tlearn.api",
    "load": "tlearn.api",
    "evaluate": "tlearn.api",
    "predict": "tlearn.api",
    "predict_on_ray": "tlearn.api",
    "export": "tlearn.api",
    "serve": "tlearn.api",
    "push": "tlearn.api",
    "demo": "tlearn.api",
    "audit": "tlearn.api",
    "select": "tlearn.api",
    "Model": "tlearn.api",
    "TlearnClassifier": "tlearn.api.estimator",
    "TrainConfig": "tlearn.config",
    "Run": "tlearn.pipeline",
    "RunReport": "tlearn.report.display",
    "Evaluation": "tlearn.evaluation.folder",
    # Engines and their answers
    "InferenceEngine": "tlearn.engines.base",
    "Classifier": "tlearn.engines.torch_engine",
    "OnnxClassifier": "tlearn.engines.onnx_engine",
    "Prediction": "tlearn.engines.base",
    "imagenet_predictions": "tlearn.engines.imagenet",
    # Deploy
    "ExportOptions": "tlearn.deploy.export",
    "ExportResult": "tlearn.deploy.export",
    "ServeSettings": "tlearn.deploy.serving",
    "export_model": "tlearn.api",  # deprecated: tlearn.export
    # Reports, demo data, errors
    "write_report": "tlearn.report.page",
    "draw_dataset": "tlearn.data.demo",
    "TlearnError": "tlearn.errors",
}
__all__ = [
    "Classifier",
    "Evaluation",
    "ExportOptions",
    "ExportResult",
    "InferenceEngine",
    "Model",
    "OnnxClassifier",
    "Prediction",
    "Run",
    "RunReport",
    "ServeSettings",
    "TlearnClassifier",
    "TlearnError",
    "TrainConfig",
    "__version__",
    "audit",
    "demo",
    "draw_dataset",
    "evaluate",
    "export",
    "export_model",
    "imagenet_predictions",
    "load",
    "predict",
    "predict_on_ray",
    "push",
    "select",
    "serve",
    "train",
    "write_report",
]

if TYPE_CHECKING:
    from tlearn.api import (
        Model,
        audit,
        demo,
        evaluate,
        export,
        export_model,
        load,
        predict,
        predict_on_ray,
        select,
        serve,
        train,
    )
    from tlearn.api.estimator import TlearnClassifier
    from tlearn.config import TrainConfig
    from tlearn.data.demo import draw_dataset
    from tlearn.deploy.export import ExportOptions, ExportResult
    from tlearn.deploy.serving import ServeSettings
    from tlearn.engines.base import InferenceEngine, Prediction
    from tlearn.engines.imagenet import imagenet_predictions
    from tlearn.engines.onnx_engine import OnnxClassifier
    from tlearn.engines.torch_engine import Classifier
    from tlearn.errors import TlearnError
    from tlearn.evaluation.folder import Evaluation
    from tlearn.pipeline import Run
    from tlearn.report.display import RunReport
    from tlearn.report.page import write_report


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tlearn' has no attribute {name!r}")
