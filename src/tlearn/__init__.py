"""tlearn: transfer learning for image classification, from a folder of labelled images to a deployable model.

Example:
    >>> import tlearn
    >>> run = tlearn.train("data/", out="runs/first")  # doctest: +SKIP
    >>> clf = tlearn.load(run.model_path)  # doctest: +SKIP
    >>> clf.predict(["photo.jpg"], top_k=3)  # doctest: +SKIP

The names below are the public API; everything else may change without notice. They are imported on first
use (PEP 562) because torch takes seconds to import and the cached-embedding path never needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "tlearn.api",
    "load": "tlearn.api",
    "evaluate": "tlearn.api",
    "demo": "tlearn.demo_data",
    "TrainConfig": "tlearn.config",
    "Run": "tlearn.training",
    "Classifier": "tlearn.classifier",
    "OnnxClassifier": "tlearn.onnx_classifier",
    "InferenceEngine": "tlearn.inference",
    "Prediction": "tlearn.inference",
    "export_model": "tlearn.export",
    "TlearnError": "tlearn.errors",
    "write_report": "tlearn.report",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from tlearn.api import evaluate, load, train
    from tlearn.classifier import Classifier
    from tlearn.config import TrainConfig
    from tlearn.demo_data import demo
    from tlearn.errors import TlearnError
    from tlearn.export import export_model
    from tlearn.inference import InferenceEngine, Prediction
    from tlearn.onnx_classifier import OnnxClassifier
    from tlearn.report import write_report
    from tlearn.training import Run


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tlearn' has no attribute {name!r}")
