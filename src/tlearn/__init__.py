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
    # Train, load, evaluate
    "train": "tlearn.api",
    "load": "tlearn.api",
    "evaluate": "tlearn.api",
    "TrainConfig": "tlearn.config",
    "Run": "tlearn.training",
    "RunReport": "tlearn.display",
    "Evaluation": "tlearn.evaluation",
    # Predict
    "InferenceEngine": "tlearn.inference",
    "Classifier": "tlearn.classifier",
    "OnnxClassifier": "tlearn.onnx_classifier",
    "Prediction": "tlearn.inference",
    "imagenet_predictions": "tlearn.imagenet",
    # Deploy
    "export_model": "tlearn.export",
    "ExportResult": "tlearn.export",
    # Reports, demo data, errors
    "write_report": "tlearn.report",
    "demo": "tlearn.demo_data",
    "draw_dataset": "tlearn.demo_data",
    "TlearnError": "tlearn.errors",
}
__all__ = [
    "Classifier",
    "Evaluation",
    "ExportResult",
    "InferenceEngine",
    "OnnxClassifier",
    "Prediction",
    "Run",
    "RunReport",
    "TlearnError",
    "TrainConfig",
    "__version__",
    "demo",
    "draw_dataset",
    "evaluate",
    "export_model",
    "imagenet_predictions",
    "load",
    "train",
    "write_report",
]

if TYPE_CHECKING:
    from tlearn.api import evaluate, load, train
    from tlearn.classifier import Classifier
    from tlearn.config import TrainConfig
    from tlearn.demo_data import demo, draw_dataset
    from tlearn.display import RunReport
    from tlearn.errors import TlearnError
    from tlearn.evaluation import Evaluation
    from tlearn.export import ExportResult, export_model
    from tlearn.imagenet import imagenet_predictions
    from tlearn.inference import InferenceEngine, Prediction
    from tlearn.onnx_classifier import OnnxClassifier
    from tlearn.report import write_report
    from tlearn.training import Run


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tlearn' has no attribute {name!r}")
