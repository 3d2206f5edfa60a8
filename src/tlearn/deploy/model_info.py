"""What the service tells clients about its model, and nothing more: a name and version to tell deployments
apart (`/readyz`, every answer), its description (`GET /v1/model`), and no directory of the server's in any text
a client sees — an error message or a backbone's origin is cut to file names.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from tlearn.engines.base import InferenceEngine
from tlearn.runs.model_dir import WEIGHTS_FILE

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:/[^\s/'\"():;,]+)+/?")


def without_directories(text: str) -> str:
    """`text` with every absolute path cut to its last part, so answers never reveal the server's folders.

    Example:
        >>> without_directories("/home/me/runs/ants.onnx: no such ONNX file")
        'ants.onnx: no such ONNX file'
    """
    return _ABSOLUTE_PATH.sub(lambda match: match.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def describe_model(engine: InferenceEngine, identity: dict[str, str]) -> dict[str, Any]:
    """What `GET /v1/model` answers (file names only: a path in the backbone's origin is cut to its name)."""
    config = engine.config
    return {
        **identity,
        "engine": engine.engine,
        "precision": engine.precision,
        "classes": engine.classes,
        "arch": config.arch,
        "backbone": {key: without_directories(str(value)) for key, value in config.backbone.items()},
        "input_size": list(engine.preprocessing.input_size),
        "preprocessing": engine.preprocessing.to_dict(),
        "mode": config.mode,
        "temperature": config.temperature,
        "task": config.task,
        "thresholds": config.thresholds,
        "reject": None if config.reject is None else config.reject.model_dump(),
        "metrics": config.metrics,
        "created": config.created,
        "tlearn_version": config.tlearn_version,
    }


def model_identity(engine: InferenceEngine) -> dict[str, str]:
    """A name for the model (its run or file name) and a version (the first 12 hex digits of its weights' SHA-256)."""
    path = engine.path
    if path is None:
        return {"name": engine.config.arch, "version": "unknown"}
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    name = path.parent.name if path.is_dir() and path.name == "model" else path.stem if path.is_file() else path.name
    return {"name": name, "version": _sha256(weights)[:12]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
