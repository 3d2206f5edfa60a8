"""The two candidate models of a run and the shipped one: the cross-validated linear head, the fine-tuned
network, and the final fit on every image the choices allow (NumPy + scikit-learn; fine-tuning imports torch).

`linear_candidate` and `finetune_candidate` each return a `Candidate`: its weights, its probabilities on the
evaluated splits and its history. The pipeline compares them (`tlearn.training.selection.choose`) and hands
the winner to `final_fit`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import BackboneInfo, BackboneRef
from tlearn.backbones.result_cache import ResultCache
from tlearn.config import DEFAULT_EPOCHS, TrainConfig
from tlearn.data.checks import CheckedData, LabelledFiles
from tlearn.errors import RunDirError
from tlearn.evaluation.tasks import Task
from tlearn.runs.layout import HistoryRow, evaluated_set
from tlearn.runs.model_dir import ModelConfig, linear_model_state
from tlearn.runs.summary import CSearchRow, EmbeddingRecord, FinetuneRecord, HeadRecord, RefitRecord
from tlearn.training.context import TrainingContext
from tlearn.training.head import LinearHead, cached_fit_head, cached_select_c
from tlearn.training.split_rows import joined
from tlearn.util import atomic
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.training.plan import FinetunePlan
    from tlearn.training.teacher import Teacher

DEFAULT_BUDGET_CPU = 480.0  # seconds of fine-tuning in auto mode (selection and refit together)
DEFAULT_BUDGET_GPU = 1200.0
CV_LIMIT = 2000  # images beyond which C is cross-validated on a sample and val is a split of its own
DATA_FINGERPRINT_FILE = "data.json"  # in RUN/checkpoints: what the fine-tuning stages were started on


@dataclass
class PreparedData:
    """The data after embedding and checking: per-split embeddings and the task's targets."""

    ref: BackboneRef
    extractor: FeatureExtractor
    info: BackboneInfo
    checked: CheckedData
    classes: list[str]
    task: Task
    features: dict[str, np.ndarray]  # split → (N, D) embeddings
    targets: dict[str, np.ndarray]  # split → the task's targets: (N,) class indices or (N, K) label indicators
    evaluated: list[str]  # splits with images among val / test
    embedding: EmbeddingRecord  # how the embeddings were obtained (cache hits, engine, seconds)
    balanced: bool = False
    results: ResultCache | None = None  # where head searches and fits are kept between runs (None: computed)
    teacher: Teacher | None = None  # --teacher: its answers, which fine-tuning learns from besides the labels

    def files(self, *splits: str) -> LabelledFiles:
        """The image files and targets of one or several splits."""
        images = self.checked.source.images
        paths = [images[p].path for split in splits for p in self.checked.positions[split]]
        return LabelledFiles(paths, self.answers(*splits))

    def training_files(self, *splits: str) -> LabelledFiles:
        """What fine-tuning trains on: the splits' files and targets, taught by the teacher when there is one
        (soft targets, then the unlabelled images)."""
        files = self.files(*splits)
        return files if self.teacher is None else self.teacher.taught(self.task, files, splits)

    @property
    def teacher_weights(self) -> dict[str, np.ndarray] | None:
        """`--prune` from a teacher of the same architecture: the network fine-tuning prunes and starts from."""
        return self.teacher.weights if self.teacher is not None else None

    def answers(self, *splits: str) -> np.ndarray:
        """The targets of one or several splits, in split order."""
        return np.concatenate([self.targets[split] for split in splits])

    def stack(self, *splits: str) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and targets of one or several splits, in split order: consecutive splits of the run's
        matrix without a copy (training/split_rows.py; at 100,000 images train + val is 410 MB)."""
        return joined([self.features[split] for split in splits]), self.answers(*splits)

    def covered(self, name: str) -> tuple[str, ...]:
        """The data splits an evaluated set covers ("cv": train then val; "val": val)."""
        return evaluated_set(name).splits

    def relpaths(self, name: str) -> list[str]:
        """Relative paths of an evaluated set's images, in the order of its probabilities."""
        return [relpath for split in self.covered(name) for relpath in self.checked.relpaths(split)]


@dataclass
class Candidate:
    """A model a run may ship: its weights, probabilities on the evaluated sets, history and what was decided."""

    model_config: ModelConfig
    state: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]  # "val", "test" and, for a linear model, "cv"
    history: list[dict[str, Any]]
    head_record: HeadRecord | None = None  # a linear candidate's C search
    finetune_record: FinetuneRecord | None = None  # a fine-tuned candidate's training
    final_fit: str | None = None  # what the shipped model learnt from (set by `final_fit`)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # saved beside the weights (reject references)
    head: LinearHead | None = field(default=None, repr=False)  # a linear candidate's head fitted on train + val
    data: PreparedData | None = field(default=None, repr=False)  # the embeddings (backbone) it was built on


def linear_candidate(config: TrainConfig, prepared: PreparedData) -> Candidate:
    """The linear head: C by cross-validation over train + val, every one of those images scored out of fold.

    Its validation answers are the out-of-fold ones of the validation images (comparable with fine-tuning's on
    the same images); its `cv` answers cover all of train + val. The head saved here is fitted on train + val;
    a multi-label head's per-class thresholds are chosen on the out-of-fold probabilities. Beyond CV_LIMIT
    images a validation split is large enough to trust and cross-validating would cost more than it tells: C
    (and thresholds) are then chosen by cross-validation on a sample of CV_LIMIT images, and the validation
    answers come from a head fitted on the training split.
    """
    started = time.perf_counter()
    task, num_classes = prepared.task, len(prepared.classes)
    dev_x, dev_t = prepared.stack("train", "val")
    options = {"task": task, "balanced": prepared.balanced, "seed": config.seed}
    results = prepared.results
    sampled = task.sample(dev_t, CV_LIMIT, config.seed) if len(dev_t) > CV_LIMIT else None
    rows = slice(None) if sampled is None else sampled
    selection = cached_select_c(results, dev_x[rows], dev_t[rows], num_classes, folds=config.cv_folds, **options)
    thresholds = task.choose_thresholds(selection.out_of_fold, dev_t[rows])
    head = cached_fit_head(results, dev_x, dev_t, num_classes, selection.c, **options)
    if sampled is None:
        val_rows = slice(len(prepared.targets["train"]), len(dev_t))
        probabilities = {"cv": selection.out_of_fold, "val": selection.out_of_fold[val_rows]}
    else:
        train_head = cached_fit_head(results, *prepared.stack("train"), num_classes, selection.c, **options)
        probabilities = {"val": train_head.probabilities(prepared.features["val"])}
    fitted = head.probabilities(dev_x)
    history = [
        HistoryRow(
            0,
            "linear head",
            selection.chosen["cv_loss"],
            selection.chosen["cv_accuracy"],
            seconds=time.perf_counter() - started,
            train_loss=task.loss(fitted, dev_t),
            train_accuracy=float(task.right(fitted, dev_t, thresholds).mean()),
        ).to_dict()
    ]
    record = HeadRecord(
        c=selection.c,
        folds=selection.folds,
        cross_validated_images=len(dev_t) if sampled is None else len(sampled),
        balanced_loss=prepared.balanced,
        candidates=[CSearchRow(**row) for row in selection.candidates],
        cv_accuracy=selection.chosen["cv_accuracy"],
        thresholds=thresholds,
        seconds=round(time.perf_counter() - started, 3),
    )
    return Candidate(
        _model_config(prepared, "linear", thresholds),
        _linear_state(prepared, head),
        probabilities,
        history,
        head_record=record,
        head=head,
        data=prepared,
    )


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
    if config.mode == "auto" and linear.head_record is not None and linear.head_record.cv_accuracy >= 1.0:
        return "the linear head makes no error in cross-validation, so fine-tuning has nothing to win"
    return None


def finetune_candidate(context: TrainingContext, prepared: PreparedData, linear: Candidate) -> Candidate:
    """Fine-tune on the training split from a linear head fitted on it alone, validated on val each epoch; a
    multi-label network's thresholds are chosen on the validation images its kept epoch was picked on."""
    from tlearn.training.finetune import finetune  # deferred: imports torch
    from tlearn.training.plan import FinetunePlan

    config, task = context.config, prepared.task
    train_count = len(prepared.targets["train"])
    splits = {"train": prepared.training_files("train"), "val": prepared.files("val")}
    if "test" in prepared.evaluated:
        splits["test"] = prepared.files("test")
    budget = _budget_seconds(config)
    if config.mode == "auto" and config.final_fit != "train":
        # the final refit runs as many epochs on more images: leave it its share of the budget
        budget *= train_count / (train_count + len(prepared.answers(*_refit_splits(config, prepared))))
    plan = FinetunePlan.from_config(
        config,
        context.dist,
        train_images=len(splits["train"].paths),
        input_size=prepared.info.preprocessing.input_size[0],
        budget_seconds=budget if config.mode == "auto" else None,
    )
    plan, start = _starting_point(config, prepared, linear, plan, ("train",))
    outcome = finetune(
        context,
        plan,
        _model_config(prepared, "finetune", task.untuned_thresholds(len(prepared.classes)), plan),
        start,
        splits,
        _class_weights(prepared, ("train",)),
        stage="select",
    )
    origin = "the teacher's network" if prepared.teacher_weights is not None else "linear head (fitted on train)"
    start = {**outcome.history[0], "stage": origin}
    thresholds = task.choose_thresholds(outcome.probabilities["val"], prepared.answers("val"))
    return Candidate(
        _model_config(prepared, "finetune", thresholds, plan),
        outcome.state,
        outcome.probabilities,
        [start, *outcome.history[1:]],
        finetune_record=FinetuneRecord(
            best_epoch=outcome.best_epoch,
            epochs=outcome.epochs,
            images_per_second=round(outcome.images_per_second, 2),
            seconds=round(outcome.seconds, 3),
            peak_gpu_memory_mb=outcome.peak_gpu_memory_mb,
            budget_seconds=round(budget, 1) if config.mode == "auto" else None,
            resumed_after_epoch=outcome.resumed_after,
            compute_kept=round(outcome.pruned.macs_after / outcome.pruned.macs_before, 4) if outcome.pruned else None,
        ),
        data=prepared,
    )


def final_fit(context: TrainingContext, linear: Candidate, chosen: Candidate) -> Candidate:
    """The shipped model: the chosen candidate fitted again on every labelled image (`--final-fit all`, the
    default) or on train + val, once the test split has been measured with the model before that fit (the
    linear head fitted on train + val; the fine-tuned network validated on val)."""
    config, prepared = context.config, chosen.data or linear.data
    chosen.final_fit = _final_fit_name(config, prepared)
    if chosen is linear:
        if config.final_fit == "train":
            head = _fit_linear_on(config, prepared, linear, ("train",))
        else:  # the head linear_candidate fitted on train + val with the chosen C: the same fit
            head = linear.head or _fit_linear_on(config, prepared, linear, ("train", "val"))
        if "test" in prepared.evaluated:
            chosen.probabilities["test"] = head.probabilities(prepared.features["test"])
        if chosen.final_fit == "all":
            head = _fit_linear_on(config, prepared, linear, ("train", "val", "test"))
        chosen.state = _linear_state(prepared, head)
        return chosen
    if config.final_fit == "train":
        return chosen
    splits = _refit_splits(config, prepared)
    refit = _refit_finetuned(
        context, prepared, linear, chosen, splits, stage="refit-all" if "test" in splits else "refit"
    )
    refit.final_fit = chosen.final_fit
    return refit


def _refit_splits(config: TrainConfig, prepared: PreparedData) -> tuple[str, ...]:
    """The splits a fine-tuned network is fitted on again at the end (one refit, after the test split was
    measured by the network validated on val)."""
    return ("train", "val", "test") if _final_fit_name(config, prepared) == "all" else ("train", "val")


def _final_fit_name(config: TrainConfig, prepared: PreparedData) -> str:
    if config.final_fit == "all" and "test" in prepared.evaluated:
        return "all"
    return "train" if config.final_fit == "train" else "train+val"


def _fit_linear_on(
    config: TrainConfig, prepared: PreparedData, linear: Candidate, splits: tuple[str, ...]
) -> LinearHead:
    """The linear head with the C `linear` chose, fitted on these splits."""
    c = linear.head_record.c if linear.head_record else 1.0
    return cached_fit_head(
        prepared.results,
        *prepared.stack(*splits),
        len(prepared.classes),
        c,
        task=prepared.task,
        balanced=prepared.balanced,
        seed=config.seed,
    )


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
    from tlearn.training.plan import FinetunePlan

    config = context.config
    record = tuned.finetune_record
    epochs = max(1, (record.epochs if record else 0) or config.epochs or DEFAULT_EPOCHS)
    files = {"train": prepared.training_files(*splits)}
    if "test" in prepared.evaluated and "test" not in splits:
        files["test"] = prepared.files("test")
    plan = FinetunePlan.from_config(
        config,
        context.dist,
        train_images=len(files["train"].paths),
        input_size=prepared.info.preprocessing.input_size[0],
    ).fixed(epochs)
    plan, start = _starting_point(config, prepared, linear, plan, splits)
    outcome = finetune(
        context,
        plan,
        tuned.model_config,
        start,
        files,
        _class_weights(prepared, splits),
        stage=stage,
    )
    offset = tuned.history[-1]["epoch"]
    rows = [
        {**row, "epoch": row["epoch"] + offset, "stage": f"{stage} on {'+'.join(splits)}: {row['stage']}"}
        for row in outcome.history[1:]
    ]
    refit = RefitRecord(
        epochs=outcome.epochs, seconds=round(outcome.seconds, 3), resumed_after_epoch=outcome.resumed_after
    )
    finetune_record = record.model_copy(update={"refits": {**record.refits, stage: refit}}) if record else None
    return Candidate(
        tuned.model_config,
        outcome.state,
        {**tuned.probabilities, **outcome.probabilities},  # a refit on every split keeps the measured test
        tuned.history + rows,
        finetune_record=finetune_record,
        data=prepared,
    )


def _budget_seconds(config: TrainConfig) -> float:
    """The fine-tuning time budget: the configured one, else 8 minutes on a CPU and 20 on a GPU."""
    if config.time_budget is not None:
        return config.time_budget
    import torch  # deferred: only fine-tuning runs get here

    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    return DEFAULT_BUDGET_GPU if on_gpu else DEFAULT_BUDGET_CPU


def _model_config(
    prepared: PreparedData, mode: str, thresholds: list[float] | None = None, plan: FinetunePlan | None = None
) -> ModelConfig:
    """The model's description; a fine-tuned network's `plan` gives its input size (a network answers at any
    size: `plan.eval_size` replaces the backbone's) and whether its channels were pruned."""
    info = prepared.info
    preprocessing = info.preprocessing.to_dict()
    if plan is not None:
        preprocessing["input_size"] = [plan.eval_size, plan.eval_size]
    return ModelConfig(
        task=prepared.task.name,
        thresholds=thresholds,
        arch=info.arch,
        backbone=prepared.ref.describe(),
        classes=prepared.classes,
        preprocessing=preprocessing,
        embedding_dim=info.num_features,
        classifier_keys=info.classifier_keys,
        mode=mode,
        pruned=plan.prune if plan is not None else None,
        split_fractions=prepared.checked.source.split_fractions,
    )


def _starting_point(
    config: TrainConfig, prepared: PreparedData, linear: Candidate, plan: FinetunePlan, splits: tuple[str, ...]
) -> tuple[FinetunePlan, dict[str, np.ndarray]]:
    """The weights a fine-tune starts from, and its plan: the backbone with the linear head fitted on `splits`;
    with `--prune` and a teacher of the same architecture, the teacher's network, its classifier kept."""
    if prepared.teacher_weights is not None:
        return dataclasses.replace(plan, head_init="linear"), prepared.teacher_weights
    return plan, _linear_state(prepared, _fit_linear_on(config, prepared, linear, splits))


def _linear_state(prepared: PreparedData, head: LinearHead) -> dict[str, np.ndarray]:
    weights = prepared.extractor.stored_weights(Progress(quiet=True))
    return linear_model_state(weights, prepared.info.classifier_keys, head.weight, head.bias)


def _class_weights(prepared: PreparedData, splits: tuple[str, ...]) -> np.ndarray | None:
    """The task's loss weights for imbalanced data (None when the loss is not weighted)."""
    if not prepared.balanced:
        return None
    return prepared.task.class_weights(prepared.answers(*splits), len(prepared.classes))
