"""The two candidate models of a run and the shipped one: the cross-validated linear head, the fine-tuned
network, and the final fit on every image the choices allow (NumPy + scikit-learn; fine-tuning imports torch).

`linear_candidate` and `finetune_candidate` each return a `Candidate`: its weights, its probabilities on the
evaluated splits and its history. The pipeline compares them (`tlearn.training.selection.choose`) and hands
the winner to `final_fit`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import BackboneInfo, BackboneRef
from tlearn.config import DEFAULT_EPOCHS, TrainConfig
from tlearn.data.checks import CheckedData, LabelledFiles
from tlearn.errors import RunDirError
from tlearn.evaluation.multilabel import binary_log_loss
from tlearn.runs.layout import HistoryRow
from tlearn.runs.model_dir import ModelConfig, linear_model_state
from tlearn.training.context import TrainingContext
from tlearn.training.head import LinearHead, fit_head, select_c
from tlearn.training.multilabel_head import choose_thresholds, fit_multilabel_head, select_c_multilabel
from tlearn.util import atomic
from tlearn.util.numeric import cross_entropy
from tlearn.util.progress import Progress

DEFAULT_BUDGET_CPU = 480.0  # seconds of fine-tuning in auto mode (selection and refit together)
DEFAULT_BUDGET_GPU = 1200.0
CV_LIMIT = 2000  # images beyond which C is cross-validated on a sample and val is a split of its own
MAX_POSITIVE_WEIGHT = 20.0  # multi-label: a rare class's positives weigh at most this many negatives
DATA_FINGERPRINT_FILE = "data.json"  # in RUN/checkpoints: what the fine-tuning stages were started on


@dataclass
class PreparedData:
    """The data after embedding and checking: per-split embeddings and labels."""

    ref: BackboneRef
    extractor: FeatureExtractor
    info: BackboneInfo
    checked: CheckedData
    classes: list[str]
    features: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    evaluated: list[str]  # splits with images among val / test
    embedding_summary: dict[str, Any]
    balanced: bool = False
    targets: dict[str, np.ndarray] | None = None  # multi-label data: per split, (N, num_classes) 0/1 indicators

    @property
    def multilabel(self) -> bool:
        """Whether the run trains a multi-label model (one yes/no answer per class)."""
        return self.targets is not None

    def files(self, *splits: str) -> LabelledFiles:
        """The image files and labels (label indicator rows for multi-label data) of one or several splits."""
        images = self.checked.source.images
        paths = [images[p].path for split in splits for p in self.checked.positions[split]]
        return LabelledFiles(paths, self.answers(*splits))

    def answers(self, *splits: str) -> np.ndarray:
        """The splits' class indices (N,), or for multi-label data their indicator rows (N, num_classes)."""
        per_split = self.targets if self.targets is not None else self.labels
        return np.concatenate([per_split[split] for split in splits])

    def stack(self, *splits: str) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and labels of one or several splits, in split order."""
        return (
            np.concatenate([self.features[split] for split in splits]),
            np.concatenate([self.labels[split] for split in splits]),
        )


@dataclass
class Candidate:
    """The shipped model: its weights, probabilities on the evaluated splits, history and what was decided."""

    model_config: ModelConfig
    state: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]  # "val", "test" and, for a linear model, "cv"
    history: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # saved beside the weights (reject references)
    head: LinearHead | None = field(default=None, repr=False)  # a linear candidate's head fitted on train + val


def linear_candidate(config: TrainConfig, prepared: PreparedData) -> Candidate:
    """The linear head: C by cross-validation over train + val, every one of those images scored out of fold.

    Its validation answers are the out-of-fold ones of the validation images (comparable with fine-tuning's on
    the same images); its `cv` answers cover all of train + val. The head saved here is fitted on train + val.
    Beyond CV_LIMIT images a validation split is large enough to trust and cross-validating would cost more
    than it tells: C is then chosen by cross-validation on a stratified sample of CV_LIMIT images, and the
    validation answers come from a head fitted on the training split.
    """
    if prepared.multilabel:
        return multilabel_linear_candidate(config, prepared)
    started = time.perf_counter()
    dev_x, dev_y = prepared.stack("train", "val")
    num_classes, options = len(prepared.classes), {"balanced": prepared.balanced, "seed": config.seed}
    sampled = _stratified_sample(dev_y, CV_LIMIT, config.seed) if len(dev_y) > CV_LIMIT else None
    rows = slice(None) if sampled is None else sampled
    selection = select_c(dev_x[rows], dev_y[rows], num_classes, folds=config.cv_folds, **options)
    head = fit_head(dev_x, dev_y, num_classes, selection.c, **options)
    if sampled is None:
        val_rows = slice(len(prepared.labels["train"]), len(dev_y))
        probabilities = {"cv": selection.out_of_fold, "val": selection.out_of_fold[val_rows]}
    else:
        train_x, train_y = prepared.stack("train")
        probabilities = {
            "val": fit_head(train_x, train_y, num_classes, selection.c, **options).probabilities(
                prepared.features["val"]
            )
        }
    fitted = head.probabilities(dev_x)
    history = [
        HistoryRow(
            0,
            "linear head",
            selection.chosen["cv_loss"],
            selection.chosen["cv_accuracy"],
            seconds=time.perf_counter() - started,
            train_loss=cross_entropy(fitted, dev_y),
            train_accuracy=float((fitted.argmax(1) == dev_y).mean()),
        ).to_dict()
    ]
    return Candidate(
        _model_config(prepared, "linear"),
        _linear_state(prepared, head),
        probabilities,
        history,
        summary={
            "c": selection.c,
            "folds": selection.folds,
            "cross_validated_images": len(dev_y) if sampled is None else len(sampled),
            "balanced_loss": prepared.balanced,
            "candidates": selection.candidates,
            "cv_accuracy": selection.chosen["cv_accuracy"],
            "seconds": round(time.perf_counter() - started, 3),
        },
        head=head,
    )


def multilabel_linear_candidate(config: TrainConfig, prepared: PreparedData) -> Candidate:
    """The multi-label linear head: one logistic regression per class, C by cross-validation over train + val,
    per-class thresholds at the best F1 of the out-of-fold probabilities; the saved head is fitted on train +
    val. Beyond CV_LIMIT images, C and the thresholds come from a random sample of CV_LIMIT of them."""
    started = time.perf_counter()
    dev_x, dev_t = prepared.stack("train", "val")[0], prepared.answers("train", "val")
    sampled = None
    if len(dev_t) > CV_LIMIT:
        sampled = np.sort(np.random.default_rng(config.seed).choice(len(dev_t), size=CV_LIMIT, replace=False))
    rows = slice(None) if sampled is None else sampled
    selection = select_c_multilabel(dev_x[rows], dev_t[rows], folds=config.cv_folds, seed=config.seed)
    thresholds = choose_thresholds(selection.out_of_fold, dev_t[rows])
    head = fit_multilabel_head(dev_x, dev_t, selection.c, seed=config.seed)
    if sampled is None:
        val_rows = slice(len(prepared.labels["train"]), len(dev_t))
        probabilities = {"cv": selection.out_of_fold, "val": selection.out_of_fold[val_rows]}
    else:
        train_head = fit_multilabel_head(prepared.features["train"], prepared.answers("train"), selection.c)
        probabilities = {"val": train_head.probabilities(prepared.features["val"])}
    fitted = head.probabilities(dev_x)
    chosen = next(row for row in selection.candidates if row["c"] == selection.c)
    history = [
        HistoryRow(
            0,
            "linear heads (one per class)",
            chosen["cv_loss"],
            chosen["cv_subset_accuracy"],
            seconds=time.perf_counter() - started,
            train_loss=binary_log_loss(fitted, dev_t),
            train_accuracy=float(((fitted >= np.asarray(thresholds)) == (dev_t > 0)).all(axis=1).mean()),
        ).to_dict()
    ]
    return Candidate(
        _model_config(prepared, "linear", thresholds),
        _linear_state(prepared, head),
        probabilities,
        history,
        summary={
            "c": selection.c,
            "folds": selection.folds,
            "cross_validated_images": len(dev_t) if sampled is None else len(sampled),
            "candidates": selection.candidates,
            "cv_accuracy": chosen["cv_subset_accuracy"],
            "thresholds": thresholds,
            "seconds": round(time.perf_counter() - started, 3),
        },
        head=head,
    )


def _stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of about `size` images keeping each class's share (at least 2 per class), sorted."""
    rng = np.random.default_rng(seed)
    share = size / len(labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=max(2, min(len(members), round(share * len(members)))), replace=False))
    return np.sort(np.concatenate(chosen))


def guard_resumed_data(context: TrainingContext, prepared: PreparedData) -> None:
    """Record what fine-tuning learns from; a resumed run must find the same classes and images.

    Raises:
        RunDirError: resuming, and the classes or a split's images (paths or contents) changed since the
            checkpoints were written.
    """
    record = context.run.checkpoints / DATA_FINGERPRINT_FILE
    current = prepared.checked.fingerprint()
    if context.resume and record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("classes") != current["classes"]:
            raise RunDirError(
                f"{context.run.root}: cannot resume: the classes changed since the checkpoint "
                f"({', '.join(saved.get('classes', []))} then, {', '.join(current['classes'])} now); start a new run"
            )
        for split, digest in current["splits"].items():
            before = saved.get("splits", {}).get(split, {})
            if before != digest:
                raise RunDirError(
                    f"{context.run.root}: cannot resume: the {split} images changed since the checkpoint "
                    f"({before.get('images', 0)} then, {digest['images']} now, or their contents differ); "
                    "start a new run"
                )
    elif context.dist.is_main:
        atomic.write_json(record, current)


def why_not_finetune(config: TrainConfig, linear: Candidate) -> str | None:
    """None when fine-tuning should run; else the reason it is skipped (auto mode only)."""
    if config.mode == "linear":
        return "--mode linear"
    if config.mode == "auto" and linear.summary["cv_accuracy"] >= 1.0:
        return "the linear head makes no error in cross-validation, so fine-tuning has nothing to win"
    return None


def finetune_candidate(context: TrainingContext, prepared: PreparedData, linear: Candidate) -> Candidate:
    """Fine-tune on the training split from a linear head fitted on it alone, validated on val each epoch."""
    from tlearn.training.finetune import finetune  # deferred: imports torch

    config = context.config
    train_y = prepared.answers("train")
    head = _fit_linear_on(config, prepared, linear, ("train",))
    splits = {"train": prepared.files("train"), "val": prepared.files("val")}
    if "test" in prepared.evaluated:
        splits["test"] = prepared.files("test")
    budget = _budget_seconds(config)
    if config.mode == "auto" and config.final_fit != "train":
        budget *= len(train_y) / (len(train_y) + len(prepared.stack("train", "val")[1]))  # leave room to refit
    outcome = finetune(
        context,
        _model_config(prepared, "finetune", [0.5] * len(prepared.classes) if prepared.multilabel else None),
        _linear_state(prepared, head),
        splits,
        _class_weights(train_y, len(prepared.classes)) if prepared.balanced else None,
        stage="select",
        budget_seconds=budget if config.mode == "auto" else None,
    )
    start = {**outcome.history[0], "stage": "linear head (fitted on train)"}
    thresholds = None
    if prepared.multilabel:  # chosen on the validation images the kept epoch was picked on
        thresholds = choose_thresholds(outcome.probabilities["val"], prepared.answers("val"))
    return Candidate(
        _model_config(prepared, "finetune", thresholds),
        outcome.state,
        outcome.probabilities,
        [start, *outcome.history[1:]],
        summary={
            "best_epoch": outcome.best_epoch,
            "epochs": outcome.epochs,
            "images_per_second": round(outcome.images_per_second, 2),
            "seconds": round(outcome.seconds, 3),
            "peak_gpu_memory_mb": outcome.peak_gpu_memory_mb,
            "budget_seconds": round(budget, 1) if config.mode == "auto" else None,
            "resumed_after_epoch": outcome.resumed_after,
        },
    )


def final_fit(context: TrainingContext, prepared: PreparedData, linear: Candidate, chosen: Candidate) -> Candidate:
    """The shipped model: the chosen candidate refitted on train + val (and on the test split too with
    `--final-fit all`, once the test split has been measured)."""
    config = context.config
    if chosen is linear:
        if config.final_fit == "train":
            head = _fit_linear_on(config, prepared, linear, ("train",))
        else:  # the head linear_candidate fitted on train + val with the chosen C: the same fit
            head = linear.head or _fit_linear_on(config, prepared, linear, ("train", "val"))
        if "test" in prepared.evaluated:
            chosen.probabilities["test"] = head.probabilities(prepared.features["test"])
        if config.final_fit == "all" and "test" in prepared.evaluated:
            head = _fit_linear_on(config, prepared, linear, ("train", "val", "test"))
        chosen.state = _linear_state(prepared, head)
        chosen.summary = {**chosen.summary, "final_fit": _final_fit_name(config, prepared)}
        return chosen
    if config.final_fit == "train":
        chosen.summary = {**chosen.summary, "final_fit": "train"}
        return chosen
    refit = _refit_finetuned(context, prepared, linear, chosen, ("train", "val"), stage="refit")
    if config.final_fit == "all" and "test" in prepared.evaluated:
        measured = refit.probabilities["test"]
        refit = _refit_finetuned(context, prepared, linear, refit, ("train", "val", "test"), stage="refit-all")
        refit.probabilities["test"] = measured
    refit.summary = {**refit.summary, "final_fit": _final_fit_name(config, prepared)}
    return refit


def _final_fit_name(config: TrainConfig, prepared: PreparedData) -> str:
    if config.final_fit == "all" and "test" in prepared.evaluated:
        return "all"
    return "train" if config.final_fit == "train" else "train+val"


def _fit_linear_on(
    config: TrainConfig, prepared: PreparedData, linear: Candidate, splits: tuple[str, ...]
) -> LinearHead:
    x, y = prepared.stack(*splits)
    if prepared.multilabel:
        return fit_multilabel_head(x, prepared.answers(*splits), linear.summary["c"], seed=config.seed)
    return fit_head(x, y, len(prepared.classes), linear.summary["c"], balanced=prepared.balanced, seed=config.seed)


def _refit_finetuned(
    context: TrainingContext,
    prepared: PreparedData,
    linear: Candidate,
    tuned: Candidate,
    splits: tuple[str, ...],
    *,
    stage: str,
) -> Candidate:
    """Fine-tune again from the start on more images, with the validated run's schedule (its epochs)."""
    from tlearn.training.finetune import finetune  # deferred: imports torch

    config = context.config
    epochs = max(1, tuned.summary.get("epochs") or config.epochs or DEFAULT_EPOCHS)
    refit_config = config.model_copy(update={"epochs": epochs, "patience": epochs + 1})
    head = _fit_linear_on(config, prepared, linear, splits)
    files = {"train": prepared.files(*splits)}
    if "test" in prepared.evaluated and "test" not in splits:
        files["test"] = prepared.files("test")
    labels = prepared.answers(*splits)
    outcome = finetune(
        TrainingContext(refit_config, context.run, context.resume, context.dist, context.tracker, context.progress),
        tuned.model_config,
        _linear_state(prepared, head),
        files,
        _class_weights(labels, len(prepared.classes)) if prepared.balanced else None,
        stage=stage,
    )
    offset = tuned.history[-1]["epoch"]
    rows = [
        {**row, "epoch": row["epoch"] + offset, "stage": f"{stage} on {'+'.join(splits)}: {row['stage']}"}
        for row in outcome.history[1:]
    ]
    probabilities = {**tuned.probabilities, **outcome.probabilities}
    return Candidate(
        tuned.model_config,
        outcome.state,
        probabilities,
        tuned.history + rows,
        summary={
            **tuned.summary,
            stage: {
                "epochs": outcome.epochs,
                "seconds": round(outcome.seconds, 3),
                "resumed_after_epoch": outcome.resumed_after,
            },
        },
    )


def _budget_seconds(config: TrainConfig) -> float:
    """The fine-tuning time budget: the configured one, else 8 minutes on a CPU and 20 on a GPU."""
    if config.time_budget is not None:
        return config.time_budget
    import torch  # deferred: only fine-tuning runs get here

    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    return DEFAULT_BUDGET_GPU if on_gpu else DEFAULT_BUDGET_CPU


def _model_config(prepared: PreparedData, mode: str, thresholds: list[float] | None = None) -> ModelConfig:
    info = prepared.info
    return ModelConfig(
        task="multilabel" if prepared.multilabel else "multiclass",
        thresholds=thresholds,
        arch=info.arch,
        backbone=prepared.ref.describe(),
        classes=prepared.classes,
        preprocessing=info.preprocessing.to_dict(),
        embedding_dim=info.num_features,
        classifier_keys=info.classifier_keys,
        mode=mode,
    )


def _linear_state(prepared: PreparedData, head: LinearHead) -> dict[str, np.ndarray]:
    weights = prepared.extractor.stored_weights(Progress(quiet=True))
    return linear_model_state(weights, prepared.info.classifier_keys, head.weight, head.bias)


def _class_weights(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (C * count): the weighting scikit-learn calls "balanced"; for multi-label indicator rows (N, C), each
    class's negatives-to-positives ratio (the positive weight of its binary loss), at most MAX_POSITIVE_WEIGHT."""
    if train_labels.ndim == 2:
        positives = train_labels.sum(axis=0)
        ratio = (len(train_labels) - positives) / np.maximum(positives, 1)
        return np.clip(ratio, 1.0, MAX_POSITIVE_WEIGHT).astype(np.float32)
    counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    return (len(train_labels) / (num_classes * np.maximum(counts, 1))).astype(np.float32)
