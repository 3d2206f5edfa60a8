"""The model directory: `model.safetensors` + `config.json`, written atomically, read without unpickling.

A tlearn model is an ordinary timm model: `timm.create_model(config["arch"], num_classes=len(classes))`
loads `model.safetensors` strictly. `config.json` adds what timm does not know: the class names in order,
the preprocessing, where the backbone came from, and the calibration temperature. Nothing here imports
torch, so a linear head can be saved on the cached-embedding path.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import save as save_numpy_safetensors

from tlearn import __version__
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import ModelFileError
from tlearn.runs.layout import MODEL_DIR
from tlearn.runs.lifecycle import is_incomplete_run
from tlearn.util import atomic

MODEL_FORMAT = "tlearn-model"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelConfig(BaseModel):
    """Contents of a model directory's `config.json`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["tlearn-model"] = MODEL_FORMAT
    format_version: int = 1
    tlearn_version: str = __version__
    arch: str  # timm model name the weights load into
    backbone: dict[str, str]  # name, arch, weights origin, key (see BackboneRef.describe)
    classes: list[str] = Field(min_length=2)
    preprocessing: dict[str, Any]
    embedding_dim: int
    classifier_keys: tuple[str, str]
    mode: Literal["linear", "finetune"]
    temperature: float = 1.0  # divide logits by this before the softmax (calibration)
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)  # split → headline figures

    def preprocessing_spec(self) -> Preprocessing:
        """The preprocessing as an object."""
        return Preprocessing.from_dict(self.preprocessing)


def linear_model_state(
    backbone_state: Mapping[str, np.ndarray], classifier_keys: tuple[str, str], weight: np.ndarray, bias: np.ndarray
) -> dict[str, np.ndarray]:
    """The backbone's state dict with its classifier replaced by a trained linear head."""
    weight_key, bias_key = classifier_keys
    state = {name: value for name, value in backbone_state.items() if name not in classifier_keys}
    state[weight_key] = np.ascontiguousarray(weight, dtype=np.float32)
    state[bias_key] = np.ascontiguousarray(bias, dtype=np.float32)
    return state


def save_model(folder: str | Path, state: Mapping[str, np.ndarray], config: ModelConfig) -> Path:
    """Write the model directory atomically (a crash leaves the previous model or none, never half)."""
    folder = Path(folder)
    payload = save_numpy_safetensors(
        {name: np.ascontiguousarray(value) for name, value in state.items()}, metadata={"format": "pt"}
    )
    with atomic.replace_directory(folder) as staging:
        (staging / WEIGHTS_FILE).write_bytes(payload)
        (staging / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return folder


def model_folder(path: str | Path, *, require_complete: bool = True) -> Path:
    """The model directory for `path`: the directory itself, a run directory holding `model/`, or a file in it.

    Args:
        path: what the user named.
        require_complete: refuse the model of a run that never completed (its marker says so): such a model
            is never predicted with, served or exported. The report of a run being written reads it anyway.

    Raises:
        ModelFileError: nothing that looks like a tlearn model is there, or its run did not complete.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"{path}: no such model directory")
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    for candidate in (path, path / MODEL_DIR):
        if (candidate / CONFIG_FILE).is_file():
            run_dir = candidate.parent if candidate.name == MODEL_DIR else candidate
            if require_complete and is_incomplete_run(run_dir):
                raise ModelFileError(
                    f"{run_dir}: the run did not complete, so its model is not used; continue it with "
                    "`tlearn train ... --out RUN --resume` or train again"
                )
            return candidate
    raise ModelFileError(f"{path}: not a tlearn model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")


def read_config(path: str | Path, *, require_complete: bool = True) -> ModelConfig:
    """Load and validate `config.json` of a model directory (see `model_folder` for `require_complete`)."""
    folder = model_folder(path, require_complete=require_complete)
    config_path = folder / CONFIG_FILE
    try:
        config = ModelConfig.model_validate(json.loads(config_path.read_text(encoding="utf-8")))
    except (ValueError, ValidationError) as error:
        first = str(error).strip().splitlines()[0]
        raise ModelFileError(f"{config_path}: not a valid tlearn model config ({first})") from None
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelFileError(f"{folder}: {WEIGHTS_FILE} is missing")
    return config
