"""The export formats, one module each, registered by name (see `registry`).

Importing the package registers the built-in formats; a new format is a module here whose `Exporter` subclass
is decorated with `@register`, imported below.
"""

from tlearn.deploy.exporters import (  # noqa: F401 (importing registers them)
    coreml_exporter,
    onnx_exporter,
    openvino_exporter,
    tflite_exporter,
    torchscript_exporter,
)
from tlearn.deploy.exporters.registry import Exported, Exporter, exporter_for, exporter_names, register

__all__ = ["Exported", "Exporter", "exporter_for", "exporter_names", "register"]
