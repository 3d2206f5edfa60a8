"""The one typed configuration of a training run, readable from and written to YAML or JSON.

Built once (defaults ← `--config` file ← command-line flags), passed down unchanged, and saved resolved as
`RUN/config.yaml` so `tlearn train --config RUN/config.yaml` repeats the run exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tlearn.backbones.registry import DEFAULT_BACKBONE
from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS
from tlearn.errors import TlearnError


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes.

    Example:
        >>> config = TrainConfig(data="data/", mode="finetune", epochs=10)
        >>> config.backbone
        'tf_efficientnet_lite0'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to learn from
    data: Path = Field(description="DATA/<class>/* or DATA/{train,val[,test]}/<class>/*.")
    split: tuple[float, float, float] | None = Field(
        None,
        description="train,val,test fractions for DATA/<class>/* (e.g. 70,15,15); default: 64,16,20, or 80,20,0 "
        "below 150 images.",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, gt=0, description="Images with more pixels are skipped (decompression bombs)."
    )
    # Backbone
    backbone: str = Field(
        DEFAULT_BACKBONE, description="Embedded backbone or any timm model name (see `tlearn backbones`)."
    )
    weights: Path | None = Field(None, description="Local backbone weights (.safetensors or state dict).")
    # Training
    mode: Literal["linear", "finetune"] = Field(
        "linear", description="linear: frozen backbone + cached embeddings; finetune: then unfreeze."
    )
    refit: bool = Field(
        True, description="Linear: refit the head on train + val with the chosen C (when a test split exists)."
    )
    epochs: int = Field(8, ge=1, description="Fine-tuning epochs (the linear head is fitted in closed form).")
    batch_size: int = Field(32, ge=1, description="Images per batch.")
    lr: float = Field(1e-4, gt=0, description="Peak fine-tuning learning rate of the top layer group.")
    layer_decay: float = Field(
        0.6, gt=0, le=1, description="Learning-rate factor from one layer group to the next lower one."
    )
    unfreeze_every: int = Field(1, ge=1, description="Epochs between unfreezing the next layer group (from the top).")
    # Small data sets close to ImageNet gain from the top stages and lose accuracy when the whole network moves.
    unfreeze_depth: int | None = Field(
        3, ge=1, description="Layer groups (from the top; the classifier is one) fine-tuning may unfreeze."
    )
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on biases and norms).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the fine-tuning loss.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear learning-rate warm-up before the cosine decay.")
    patience: int = Field(4, ge=1, description="Early stopping: epochs without validation improvement.")
    augment: Literal["trivial", "basic", "none"] = Field("basic", description="Fine-tuning augmentation.")
    balance: Literal["auto", "on", "off"] = Field(
        "auto", description="Class-weighted loss; auto: when the training split is imbalanced beyond 3:1."
    )
    seed: int = Field(0, description="Random seed (shuffling, augmentation, solver).")
    calibrate: bool = Field(
        False, description="Fit a temperature on val (temperature scaling) and store it in the model."
    )
    # Where and how to compute
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Fine-tuning autocast; auto: bf16 (else fp16) on GPU, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the model for fine-tuning.")
    workers: int | None = Field(None, ge=0, description="Image decoding processes (default: from the core count).")
    # Tracking
    mlflow: str | None = Field(None, description="Also log to this MLflow tracking URI (server URL or folder).")

    @field_validator("data", "weights")
    @classmethod
    def _absolute_path(cls, value: Path | None) -> Path | None:
        """Stored absolute, so `--config RUN/config.yaml` repeats the run from any working directory."""
        return None if value is None else value.expanduser().absolute()

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is None:
            return None
        if any(part < 0 for part in value) or value[0] <= 0 or value[1] <= 0:
            raise ValueError("split needs positive train and val fractions and a non-negative test fraction")
        total = sum(value)
        return tuple(part / total for part in value)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (paths as strings)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def parse_split(text: str) -> tuple[float, float, float]:
    """`"0.6,0.2,0.2"`, `"60/20/20"` or `"80,20,0"` → normalised fractions."""
    parts = [part for part in text.replace("/", ",").split(",") if part.strip()]
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise TlearnError(f"--split {text!r}: expected three numbers such as 0.6,0.2,0.2 or 60/20/20") from None
    if len(values) != 3:
        raise TlearnError(f"--split {text!r}: expected three numbers (train, val, test)")
    return values


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of settings (validated when combined)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TlearnError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise TlearnError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({error})") from None
    if not isinstance(values, dict):
        raise TlearnError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def build_config(file_values: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Defaults ← values from a config file ← explicit overrides (None means "not given")."""
    values = dict(file_values or {})
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or 'config'}: {issue['msg']}" for issue in error.errors()
        )
        raise TlearnError(f"invalid configuration: {problems}") from None
