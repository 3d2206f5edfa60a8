"""The one typed configuration of a training run, readable from and written to YAML or JSON.

Built once (defaults ← `--config` file ← command-line flags), passed down unchanged, and saved resolved as
`RUN/config.yaml` so `tlearn train --config RUN/config.yaml` repeats the run exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tlearn.backbones.registry import AUTO_BACKBONE
from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS
from tlearn.errors import TlearnError
from tlearn.util.durations import parse_duration

# Fine-tuning epochs when `epochs` is not set (raised for very small folders); the time budget may shorten them.
# 24 against 12 (patience 8 against 4), three splits per set: signs 98.2 +- 0.9 against 97.8 +- 1.1, mri 90.7 +- 1.5
# against 87.7 +- 3.9 (benchmarks/results/exp-epochs24.json, suite-default-resplits.json).
DEFAULT_EPOCHS = 24

# `--prune`'s recovery recipe, for the settings not given: every layer trained from the first epoch at one
# learning rate. A pruned network has lost channels in every layer, so all of them must re-learn; unfreezing
# from the top with lower rates below (the default, made for ImageNet features) leaves the damaged lower layers
# as they are for most of the run. Pruned to 1/1.5 from its teacher, mri (Lite0): 91.7% with this recipe against
# 89.8% with the default one, unpruned 93.6% (benchmarks/results/exp-prune-recipe-mri.json, prune.json).
PRUNED_RECIPE = {"unfreeze_every": 0, "layer_decay": 1.0, "lr": 1e-3}


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes.

    Example:
        >>> config = TrainConfig(data="data/", mode="finetune", epochs=10)
        >>> config.backbone, config.epochs
        ('auto', 10)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to learn from
    data: Path = Field(
        description="DATA/<class>/*, DATA/{train,val[,test]}/<class>/*, a label file (path,label[,split] .csv, "
        ".json or .jsonl), or WebDataset shards (DATA/*.tar, DATA/{train,val[,test]}/*.tar, or one .tar)."
    )
    split: tuple[float, float, float] | None = Field(
        None,
        description="train,val,test fractions for DATA/<class>/* (e.g. 70,15,15); default: 64,16,20 at every "
        "folder size (fixed hash buckets: adding images never moves one).",
    )
    follow_links: bool = Field(
        False,
        description="Read images outside DATA: symbolic links leading out of it, label-file rows naming files "
        "elsewhere (else listed, skipped).",
    )
    review: Path | None = Field(
        None, description="A review list from `tlearn audit` (path,given,suggested,action): relabel or drop images."
    )
    label_sep: str = Field(
        "|", min_length=1, description="Separator of several labels in one label-file cell (multi-label)."
    )
    task: Literal["auto", "multiclass", "multilabel"] = Field(
        "auto",
        description="multilabel: any number of classes per image (sigmoid per class, thresholds chosen on val); "
        "auto: multilabel when any image has several labels in a label file.",
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS, gt=0, description="Images with more pixels are skipped (decompression bombs)."
    )
    # Backbone
    backbone: str = Field(
        AUTO_BACKBONE,
        description="auto: the embedded backbone (Lite0, Lite1, Lite2) whose linear head cross-validates best on "
        "this data; or an embedded backbone or any timm model name (see `tlearn backbones`); best: the winner of "
        "the last `tlearn select` on this data.",
    )
    weights: Path | None = Field(None, description="Local backbone weights (.safetensors or state dict).")
    crop: Literal["auto", "center", "squash", "border"] = Field(
        "auto",
        description="How a picture is fitted to the backbone's square input: center (crop the middle), squash "
        "(resize the whole picture, changing its proportions), border (fit it whole, padding the sides); auto: "
        "center for single-label data, squash for multi-label.",
    )
    # Training
    mode: Literal["auto", "linear", "finetune"] = Field(
        "auto",
        description="auto: linear head, then fine-tuning within --time-budget, keeping the better on validation; "
        "linear: frozen backbone + cached embeddings only; finetune: always fine-tune.",
    )
    final_fit: Literal["train", "train+val", "all"] = Field(
        "all",
        description="What the shipped model learns from once the choices are made and the figures taken: all "
        "(every labelled image, test split included, after it has been measured); train+val; train.",
    )
    teacher: str | None = Field(
        None,
        description="A trained model (run folder, model folder, .onnx file or hf-hub:OWNER/NAME) whose probabilities "
        "on the training images the fine-tuned network also learns from (knowledge distillation): e.g. a larger "
        "backbone's run, to ship a smaller, faster network.",
    )
    teacher_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="With --teacher: the teacher's share of the fine-tuning targets (the labels' share is 1 - it).",
    )
    unlabelled: Path | None = Field(
        None,
        description="With --teacher: a folder of unlabelled images (searched recursively) the fine-tuned network also "
        "learns from, with the teacher's probabilities as targets.",
    )
    prune: float | None = Field(
        None,
        gt=1,
        le=5,
        description="Channel-prune the fine-tuned network to 1/PRUNE of its compute per image (e.g. 1.5: a third "
        "less; torch-pruning, the least important channels first), then fine-tune it to recover; implies --mode "
        "finetune. With --teacher (the unpruned run) it learns from the teacher's answers too, and a teacher of "
        "the same architecture is the network pruned (else the ImageNet backbone is).",
    )
    time_budget: float | None = Field(
        None,
        gt=0,
        description="Seconds (or 90s, 10m, 1h) that fine-tuning may take in auto mode, refit included; "
        "default: 8m on a CPU, 20m on a GPU.",
        json_schema_extra={"cli_type": "str"},
    )
    cv_folds: int = Field(5, ge=2, description="Cross-validation folds for the linear head's choices.")
    epochs: int | None = Field(
        None,
        ge=1,
        description="Fine-tuning epochs (none: 24, more for folders too small to make 60 optimizer steps in 24).",
    )
    batch_size: int = Field(32, ge=1, description="Images per batch.")
    lr: float = Field(
        2e-3, gt=0, description="Peak fine-tuning learning rate of the top layer group (with --prune: 1e-3)."
    )
    layer_decay: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Learning-rate factor from one layer group to the next lower one (with --prune: 1).",
    )
    unfreeze_every: int = Field(
        1,
        ge=0,
        description="Epochs between unfreezing the next layer group, from the top (0: all at once; with --prune: 0).",
    )
    unfreeze_depth: int | None = Field(
        None,
        ge=1,
        description="Layer groups (from the top; the classifier is one) fine-tuning may unfreeze (none: all).",
    )
    bn: Literal["train", "frozen", "adapt"] = Field(
        "train",
        description="Batch norm while fine-tuning: train (batch statistics), frozen (ImageNet's), adapt "
        "(re-estimated once on the training images, then kept).",
    )
    head_init: Literal["linear", "zero"] = Field(
        "zero", description="Fine-tuning starts from the fitted linear head, or from a zero classifier."
    )
    train_size: int | None = Field(None, ge=32, description="Training crop size (none: the backbone's input size).")
    eval_size: int | None = Field(
        None,
        ge=32,
        description="Input size a fine-tuned network is validated, tested, exported and served at (none: its "
        "training crop x 15/14 to a multiple of 8, 240 for 224, when trained on random resized crops; else the crop).",
    )
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay (not on biases and norms).")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Label smoothing of the fine-tuning loss.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear learning-rate warm-up before the cosine decay.")
    patience: int = Field(8, ge=1, description="Early stopping: epochs without validation improvement.")
    augment: Literal["trivial", "basic", "none"] = Field("basic", description="Fine-tuning augmentation.")
    balance: Literal["auto", "on", "off"] = Field(
        "auto", description="Class-weighted loss; auto: when the training split is imbalanced beyond 3:1."
    )
    seed: int = Field(0, description="Random seed (shuffling, augmentation, solver).")
    calibrate: bool = Field(
        False, description="Fit a temperature on val (temperature scaling) and store it in the model."
    )
    reject: Literal["off", "knn", "confidence"] = Field(
        "off",
        description="Answer 'unknown' for images unlike the training images: knn (similarity of the embedding to "
        "the training embeddings) or confidence (top-class probability); threshold chosen on val.",
    )
    target_accuracy: float | None = Field(
        None,
        gt=0,
        le=1,
        description="With --reject: the threshold keeps this accuracy on the answered val images (default for "
        "confidence: 0.95).",
    )
    target_coverage: float | None = Field(
        None,
        gt=0,
        le=1,
        description="With --reject: the threshold answers this share of the val images (default for knn: 0.95).",
    )
    # Where and how to compute
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    embedding_engine: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="Frozen-backbone extraction: auto is onnxruntime on a CPU once the backbone's graph is exported "
        "and checked against torch, torch on a GPU.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Fine-tuning autocast; auto: bf16 (else fp16) on GPU, fp32 on CPU."
    )
    compile: bool = Field(False, description="torch.compile the model for fine-tuning.")
    workers: int | None = Field(None, ge=0, description="Image decoding processes (default: from the core count).")
    ray: str | None = Field(
        None,
        description='Embed the images the cache lacks on a Ray cluster: "local", "auto" or "ray://HOST:PORT" '
        '(pip install "tlearn[ray]"; images at the same paths on every node).',
    )
    # Tracking
    mlflow: str | None = Field(None, description="Also log to this MLflow tracking URI (server URL or folder).")
    wandb: str | None = Field(
        None, description="Also log to this Weights & Biases project (WANDB_MODE=offline: written locally)."
    )

    @model_validator(mode="before")
    @classmethod
    def _older_settings(cls, values: Any) -> Any:
        """Configurations saved by earlier versions: `refit: false` is `final_fit: train`."""
        if isinstance(values, dict) and "refit" in values:
            values = dict(values)
            if values.pop("refit") is False:
                values.setdefault("final_fit", "train")
        return values

    @model_validator(mode="before")
    @classmethod
    def _pruning_fine_tunes(cls, values: Any) -> Any:
        """`--prune` without a mode fine-tunes: a linear head on the unpruned backbone would not be faster; and
        the recovery recipe (`PRUNED_RECIPE`) fills the learning-rate settings not given."""
        if not isinstance(values, dict) or values.get("prune") is None:
            return values
        values = {**PRUNED_RECIPE, **values}
        if values.get("mode", "auto") == "auto":
            values["mode"] = "finetune"
        return values

    @model_validator(mode="after")
    def _one_reject_target(self) -> TrainConfig:
        if self.target_accuracy is not None and self.target_coverage is not None:
            raise ValueError("give --target-accuracy or --target-coverage, not both")
        return self

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        """`90`, `"90s"`, `"10m"`, `"1.5h"`, `"1h30m"` → seconds (`tlearn.util.durations`)."""
        return parse_duration(value.lower()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _teacher_teaches_fine_tuning(self) -> TrainConfig:
        if self.teacher is not None and self.mode == "linear":
            raise ValueError("--teacher teaches a fine-tuned network, and --mode linear does not fine-tune")
        if self.prune is not None and self.mode == "linear":
            raise ValueError("--prune makes a fine-tuned network smaller, and --mode linear does not fine-tune")
        if self.unlabelled is not None and self.teacher is None:
            raise ValueError("--unlabelled images are learnt from a teacher's answers: give --teacher too")
        return self

    @field_validator("teacher")
    @classmethod
    def _teacher_path(cls, value: str | None) -> str | None:
        """A local teacher is stored absolute (as `data` is); a Hub name is kept as written."""
        if value is None or value.startswith("hf-hub:"):
            return value
        return str(Path(value).expanduser().absolute())

    @field_validator("data", "weights", "review", "unlabelled")
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
