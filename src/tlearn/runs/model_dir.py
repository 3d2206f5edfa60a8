"""The model directory: `model.safetensors` + `config.json`, written atomically, read without unpickling.

A tlearn model is an ordinary timm model: `timm.create_model(config["arch"], num_classes=len(classes))`
loads `model.safetensors` strictly. `config.json` adds what timm does not know: the class names in order,
the preprocessing, where the backbone came from, and the calibration temperature. Nothing here imports
torch, so a linear head can be saved on the cached-embedding path.

A model directory is checked when it is read, before any engine uses it: `config.json` is user-supplied input
(a run folder is copied, mailed, edited), so every number in it is range-checked (`check_model_config`). A
temperature of 1e-308, a preprocessing that would divide by 1e-45 or resize every image to gigapixels, or a
classifier whose rows do not match the classes would otherwise fail later, far from the cause, or quietly give
wrong answers (NaN probabilities). `arch` must be a plain timm registry name: timm reads `hf-hub:` and
`local-dir:` names from the network or the file system, and loading a model never does either because of its
config. A config of a newer format than this tlearn reads is refused with the advice to upgrade.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_numpy_safetensors

from tlearn import __version__
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import ModelFileError
from tlearn.evaluation.tasks import Task, task_named
from tlearn.runs.layout import MODEL_DIR
from tlearn.runs.lifecycle import is_incomplete_run, settle_interrupted
from tlearn.util import atomic

MODEL_FORMAT = "tlearn-model"
# The config.json layout this tlearn writes; it reads this one only. Bump it when a field changes meaning, and
# keep reading the older ones.
MODEL_FORMAT_VERSION = 1
FIRST_READER = {1: "0.1.0"}  # the first tlearn release that reads each format version
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REFERENCES_FILE = "reject.safetensors"  # beside the weights: the "knn" reject rule's training embeddings
# What a loadable model's preprocessing may ask for: beyond these, an image would be resized to an absurd size
# (timm's models use 32 to about 600 pixels, crop percentages 0.875 to 1.0).
INPUT_SIDE_RANGE = (8, 4096)
CROP_PCT_RANGE = (0.25, 2.0)
# Normalisation of pixels in [0, 1]: timm's models use means of 0 to 0.5 and stds of 0.2 to 1. Outside these
# ranges a pixel normalises to thousands (or to infinity in float32), and the answers are noise or NaN.
MEAN_RANGE = (-10.0, 10.0)
STD_RANGE = (1e-3, 10.0)
# Logits are divided by the temperature; calibration fits it within 0.05 to 20 (`fit_temperature`).
TEMPERATURE_RANGE = (1e-2, 1e2)
EMBEDDING_DIM_RANGE = (1, 1 << 20)
# What a reject score can be: a probability ("confidence") or a cosine similarity ("knn"), with room for float32
# rounding, since the threshold is one of the scores seen on validation.
REJECT_SCORE_RANGE = {"confidence": (0.0, 1.0), "knn": (-1.0, 1.0)}
SCORE_ROUNDING = 1e-3
# A timm registry name, optionally with its pretrained tag ("resnet50.a1_in1k"): no source prefix
# ("hf-hub:", "local-dir:") and no path, so building the network reads nothing but the model's own weights.
ARCH_NAME = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100})?")


class RejectRule(BaseModel):
    """When a model answers "unknown" instead of a class: its score of an image is below `threshold`.

    `score` "knn": cosine similarity of the image's embedding (standardised) to its k-th nearest training
    embedding, stored in `reject.safetensors` beside the weights (see `tlearn.engines.answers`); "confidence":
    the calibrated probability of the top class. `target` records what the threshold was chosen for on
    validation images ({"accuracy": 0.95} of the answered images, or {"coverage": 0.9} of images answered).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: Literal["knn", "confidence"]
    threshold: float
    k: int = Field(default=5, ge=1)
    target: dict[str, float] = Field(default_factory=dict)


class ModelConfig(BaseModel):
    """Contents of a model directory's `config.json`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["tlearn-model"] = MODEL_FORMAT
    format_version: int = MODEL_FORMAT_VERSION
    tlearn_version: str = __version__
    arch: str  # timm model name the weights load into
    backbone: dict[str, str]  # name, arch, weights origin, key (see BackboneRef.describe)
    classes: list[str] = Field(min_length=2)
    preprocessing: dict[str, Any]
    embedding_dim: int
    classifier_keys: tuple[str, str]
    mode: Literal["linear", "finetune"]
    temperature: float = 1.0  # divide logits by this before the softmax (calibration)
    # "multilabel": one sigmoid per class, an image gets every class whose probability reaches its threshold.
    task: Literal["multiclass", "multilabel"] = "multiclass"
    thresholds: list[float] | None = None  # per class, in class order (multilabel only)
    reject: RejectRule | None = None  # None: the model always answers one of its classes
    # `--prune`: the speed-up channel pruning aimed at; the layers' widths are then read from the weights' shapes
    pruned: float | None = Field(default=None, gt=1)
    # train/val/test fractions of the hash split its run drew (class folders; a label file or pre-split folder
    # without some split): `tlearn evaluate --split test` draws the same test split. None: the default's.
    split_fractions: tuple[float, float, float] | None = None
    created: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)  # split → headline figures

    def preprocessing_spec(self) -> Preprocessing:
        """The preprocessing as an object."""
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def task_type(self) -> Task:
        """What `task` names: how the model's outputs become probabilities and answers."""
        return task_named(self.task)


def linear_model_state(
    backbone_state: Mapping[str, np.ndarray], classifier_keys: tuple[str, str], weight: np.ndarray, bias: np.ndarray
) -> dict[str, np.ndarray]:
    """The backbone's state dict with its classifier replaced by a trained linear head."""
    weight_key, bias_key = classifier_keys
    state = {name: value for name, value in backbone_state.items() if name not in classifier_keys}
    state[weight_key] = np.ascontiguousarray(weight, dtype=np.float32)
    state[bias_key] = np.ascontiguousarray(bias, dtype=np.float32)
    return state


def save_model(
    folder: str | Path,
    state: Mapping[str, np.ndarray],
    config: ModelConfig,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write the model directory atomically (a crash leaves the previous model or none, never half).

    `extra_files` ({name: bytes}) land in the same directory in the same step, e.g. the reject rule's
    reference embeddings (`REFERENCES_FILE`, read by `tlearn.engines.answers`).
    """
    folder = Path(folder)
    payload = save_numpy_safetensors(
        {name: np.ascontiguousarray(value) for name, value in state.items()}, metadata={"format": "pt"}
    )
    with atomic.replace_directory(folder) as staging:
        (staging / WEIGHTS_FILE).write_bytes(payload)
        (staging / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
        for name, content in (extra_files or {}).items():
            (staging / name).write_bytes(content)
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
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    # First, a previous run that a killed --overwrite set aside goes back in place (its model/ may be missing here).
    run_dirs = (path, path.parent) if path.name == MODEL_DIR else (path,)
    kept = {run_dir: settle_interrupted(run_dir) for run_dir in run_dirs if run_dir.is_dir()}
    if not path.exists():
        raise ModelFileError(f"{path}: no such model directory")
    for candidate in (path, path / MODEL_DIR):
        if (candidate / CONFIG_FILE).is_file():
            run_dir = candidate.parent if candidate.name == MODEL_DIR else candidate
            if require_complete and is_incomplete_run(run_dir):
                raise ModelFileError(_incomplete_message(run_dir, kept.get(run_dir)))
            return candidate
    for run_dir, kept_at in kept.items():
        if require_complete and kept_at is not None and is_incomplete_run(run_dir):
            raise ModelFileError(_incomplete_message(run_dir, kept_at))
    raise ModelFileError(f"{path}: not a tlearn model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")


def _incomplete_message(run_dir: Path, kept: Path | None) -> str:
    """Why the model of an unfinished run is refused, and what to do (one line)."""
    if kept is not None:
        return (
            f"{run_dir}: a run replacing this one has not completed (it is still being written, or tlearn cannot "
            f"put the previous run back); the previous run is kept at {kept}"
        )
    return (
        f"{run_dir}: the run did not complete, so its model is not used; continue it with "
        "`tlearn train ... --out RUN --resume` or train again"
    )


def read_config(path: str | Path, *, require_complete: bool = True) -> ModelConfig:
    """Load and validate `config.json` of a model directory (see `model_folder` for `require_complete`).

    Raises:
        ModelFileError: the config is missing, unreadable or holds values no model can run with
            (`check_model_config`), or the weights are missing or do not fit the classes (`check_classifier`).
    """
    folder = model_folder(path, require_complete=require_complete)
    config_path = folder / CONFIG_FILE
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
        check_format_version(values, str(config_path))
        config = ModelConfig.model_validate(values)
    except ValidationError as error:
        raise ModelFileError(f"{config_path}: not a valid tlearn model config ({describe_validation(error)})") from None
    except ValueError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelFileError(f"{config_path}: not a valid tlearn model config ({first})") from None
    check_model_config(config, str(config_path))
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelFileError(f"{folder}: {WEIGHTS_FILE} is missing")
    check_classifier(folder / WEIGHTS_FILE, config)
    return config


def describe_validation(error: ValidationError) -> str:
    """pydantic's errors as one line: `field: problem` for each (its own message spans several lines)."""
    problems = [f"{'.'.join(map(str, item['loc'])) or 'config'}: {item['msg']}" for item in error.errors()]
    return "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")


def check_format_version(values: object, where: str) -> None:
    """Refuse a config of a format this tlearn does not read, before its fields are validated (a newer format's
    fields may not fit this one's, and "upgrade tlearn" is the fix, not "field required").

    Args:
        values: the parsed config.json (anything JSON holds).
        where: the file it came from, to start the message with.

    Raises:
        ModelFileError: `format_version` is a whole number other than the one this tlearn reads.

    Example:
        >>> check_format_version({"format_version": 99, "tlearn_version": "9.0"}, "m/config.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tlearn.errors.ModelFileError: m/config.json: model format version 99 (written by tlearn '9.0') is newer ...
    """
    if not isinstance(values, Mapping):
        return  # not an object: validation says so
    version = values.get("format_version", MODEL_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version == MODEL_FORMAT_VERSION:
        return  # the right version, or not a whole number: validation says so
    readers = (
        f"this tlearn {__version__} reads format version {MODEL_FORMAT_VERSION}, "
        f"as every tlearn since {FIRST_READER[MODEL_FORMAT_VERSION]} does"
    )
    if version < MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{where}: model format version {version} is not a tlearn model format ({readers})")
    written_by = values.get("tlearn_version")
    author = f" (written by tlearn {written_by[:40]!r})" if isinstance(written_by, str) and written_by else ""
    raise ModelFileError(
        f"{where}: model format version {version}{author} is newer than this tlearn reads ({readers}); "
        f"upgrade tlearn (pip install -U tlearn) to a release that reads format version {version} to use this model"
    )


def check_model_config(config: ModelConfig, where: str) -> None:
    """Refuse values no model can run with or that would give wrong answers, naming the value and the fix.

    Every number is range-checked, not only for being a number: a temperature of 1e-308 or a std of 1e-45 is
    positive and finite, and turns every probability into NaN.

    Args:
        config: a model's config (from `config.json` or an ONNX file's metadata).
        where: the file it came from, to start the message with.

    Raises:
        ModelFileError: a format version this tlearn does not read; an `arch` that is not a plain timm name; a
            temperature outside `TEMPERATURE_RANGE`; duplicate class names; thresholds or a reject rule that
            do not fit the task or their score; non-finite metrics; or a preprocessing that cannot be applied
            (unknown interpolation, crop_pct, input size, mean or std out of range).

    Example:
        >>> check_model_config(read_config("runs/ants/model"), "runs/ants/model/config.json")  # doctest: +SKIP
    """
    fix = "fix it in config.json or train the model again"
    check_format_version(config.model_dump(include={"format_version", "tlearn_version"}), where)
    if not ARCH_NAME.fullmatch(config.arch):
        raise ModelFileError(
            f"{where}: arch {config.arch[:80]!r} is not a timm architecture name (such as 'tf_efficientnet_lite0' "
            "or 'resnet50.a1_in1k'); a model is only built from its own weights, never from a hub or a path "
            f"named in its config; {fix}"
        )
    temperature = config.temperature
    low, high = TEMPERATURE_RANGE
    if not (math.isfinite(temperature) and low <= temperature <= high):
        raise ModelFileError(
            f"{where}: temperature {temperature} must be a positive number between {low:g} and {high:g} (logits "
            "are divided by it); set it to 1.0 (no calibration) or calibrate again with `tlearn train --calibrate`"
        )
    duplicates = sorted({name for name in config.classes if config.classes.count(name) > 1})
    if duplicates:
        raise ModelFileError(f"{where}: class name(s) {', '.join(map(repr, duplicates))} listed twice; {fix}")
    low_dim, high_dim = EMBEDDING_DIM_RANGE
    if not low_dim <= config.embedding_dim <= high_dim:
        raise ModelFileError(
            f"{where}: embedding_dim {config.embedding_dim} must be between {low_dim} and {high_dim}; {fix}"
        )
    _check_answers(config, where, fix)
    _check_figures(config, where, fix)
    _check_preprocessing(config, where, fix)


def _check_preprocessing(config: ModelConfig, where: str, fix: str) -> None:
    """The preprocessing can be applied and keeps pixels in a sensible range (see `INPUT_SIDE_RANGE` ...)."""
    values = config.preprocessing
    try:
        preprocessing = config.preprocessing_spec()
        size = list(preprocessing.input_size)
        numbers = [float(value) for value in (preprocessing.crop_pct, *preprocessing.mean, *preprocessing.std)]
    except (KeyError, TypeError, ValueError) as error:
        reason = f"{type(error).__name__}: {error}"
        raise ModelFileError(f"{where}: unusable preprocessing {values} ({reason}); {fix}") from None
    low, high = INPUT_SIDE_RANGE
    whole = all(isinstance(side, int) and not isinstance(side, bool) for side in size)
    if len(size) != 2 or not whole or not all(low <= side <= high for side in size):
        raise ModelFileError(
            f"{where}: preprocessing input_size {values.get('input_size')} must be (height, width) in whole pixels "
            f"between {low} and {high}; {fix}"
        )
    if not all(math.isfinite(number) for number in numbers) or len(preprocessing.mean) != 3:
        raise ModelFileError(f"{where}: preprocessing crop_pct, mean and std must be finite numbers; {fix}")
    low_crop, high_crop = CROP_PCT_RANGE
    if not low_crop <= preprocessing.crop_pct <= high_crop:
        raise ModelFileError(
            f"{where}: preprocessing crop_pct {preprocessing.crop_pct} must be between {low_crop} and {high_crop} "
            f"(the share of the resized image kept by the centre crop; timm's models use 0.875 to 1.0); {fix}"
        )
    low_mean, high_mean = MEAN_RANGE
    if not all(low_mean <= float(value) <= high_mean for value in preprocessing.mean):
        raise ModelFileError(
            f"{where}: preprocessing mean {list(preprocessing.mean)} must be three numbers between {low_mean:g} and "
            f"{high_mean:g} (pixels are in 0 to 1; timm's models use 0 to 0.5); {fix}"
        )
    low_std, high_std = STD_RANGE
    if len(preprocessing.std) != 3 or not all(low_std <= float(value) <= high_std for value in preprocessing.std):
        raise ModelFileError(
            f"{where}: preprocessing std {list(preprocessing.std)} must be three positive numbers between "
            f"{low_std:g} and {high_std:g} (pixels are divided by them; timm's models use 0.2 to 1); {fix}"
        )


def _check_answers(config: ModelConfig, where: str, fix: str) -> None:
    """Thresholds as the task needs them (one probability per class for a multi-label model, none otherwise);
    a reject threshold within the range of its score, and a target that is a share of images."""
    problem = config.task_type.threshold_problem(config.thresholds, len(config.classes))
    if problem:
        raise ModelFileError(f"{where}: {problem}; {fix}")
    rule = config.reject
    if rule is None:
        return
    low, high = REJECT_SCORE_RANGE[rule.score]
    if not (math.isfinite(rule.threshold) and low - SCORE_ROUNDING <= rule.threshold <= high + SCORE_ROUNDING):
        raise ModelFileError(
            f"{where}: reject threshold {rule.threshold} must be a finite number between {low:g} and {high:g} "
            f"(the range of the {rule.score} score); {fix}"
        )
    if not all(math.isfinite(value) and 0.0 <= value <= 1.0 for value in rule.target.values()):
        raise ModelFileError(f"{where}: reject target {rule.target} must hold shares between 0 and 1; {fix}")


def _check_figures(config: ModelConfig, where: str, fix: str) -> None:
    """The recorded metrics are finite (they are shown by `/v1/model` and the report, and NaN is not JSON)."""
    for split, figures in config.metrics.items():
        for name, value in figures.items():
            if not math.isfinite(value):
                raise ModelFileError(f"{where}: metrics {split[:40]!r} {name[:40]!r} is {value}, not a number; {fix}")


def check_classifier(weights: Path, config: ModelConfig) -> None:
    """Refuse weights whose classifier has a different number of rows than the config has classes.

    Reads only the safetensors header (a few kB, no tensor, no torch): the loader would otherwise fail deep in
    timm, or an ONNX/torch engine would map outputs to the wrong names.

    Raises:
        ModelFileError: the weights are unreadable, lack the classifier, or have one row per other class count.
    """
    weight_key, bias_key = config.classifier_keys
    try:
        with safe_open(str(weights), framework="numpy") as stored:
            keys = set(stored.keys())
            missing = [key for key in (weight_key, bias_key) if key not in keys]
            if missing:
                raise ModelFileError(
                    f"{weights}: no classifier {', '.join(missing)} (config.json names it); "
                    "the weights and config.json come from different models"
                )
            rows = stored.get_slice(weight_key).get_shape()[0]
            bias = stored.get_slice(bias_key).get_shape()
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{weights}: unreadable weights ({error})") from None
    if rows != len(config.classes) or list(bias) != [len(config.classes)]:
        raise ModelFileError(
            f"{weights}: the classifier has {rows} output rows but config.json lists {len(config.classes)} classes; "
            "the weights and config.json come from different models (train again, or restore the matching pair)"
        )
