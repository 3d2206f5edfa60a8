"""Learning from a trained model as well as from the labels (`--teacher`: knowledge distillation, Hinton, Vinyals
and Dean 2015), to ship a small, fast network that answers like a larger or slower one.

The teacher is any tlearn model (a run, a model folder, an exported `.onnx` file, a Hub name). It answers every
labelled image of the run once, on its own engine and preprocessing, and the images of `--unlabelled` if given.
Fine-tuning then trains on soft targets: (1 - share) x the labels + share x the teacher's probabilities
(`Task.taught_targets`), and on the unlabelled images the teacher's probabilities alone. Validation and test stay
on the labels, so the run's figures describe the student against the truth; the teacher's own accuracy on the
same images is recorded beside them (`run.json` "teacher", the report's choice table).

Probabilities at temperature 1 rather than Hinton's softened logits, because probabilities are what every tlearn
model gives (an exported graph ends in its softmax or sigmoids, and a multi-label model's sigmoids share no
temperature); the labels' share keeps the student from copying the teacher's mistakes whole.

Unlabelled images whose bytes are those of a labelled image of the run are skipped: a copy of a validation or
test image would teach the student the teacher's answer on the very image it is then scored on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from tlearn.config import TrainConfig
from tlearn.data.checks import LabelledFiles
from tlearn.data.discovery import list_image_files
from tlearn.data.images import ImageDecodeError, read_file_bytes
from tlearn.engines.loading import load_engine
from tlearn.engines.options import PredictOptions
from tlearn.errors import DataError
from tlearn.evaluation.tasks import Task
from tlearn.runs.hub_models import local_model
from tlearn.runs.layout import CONFIG_FILE, SUMMARY_FILE
from tlearn.runs.model_dir import WEIGHTS_FILE, model_folder
from tlearn.runs.summary import TeacherRecord, read_run_summary
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.engines.base import InferenceEngine
    from tlearn.training.candidates import PreparedData


@dataclass
class Teacher:
    """The teacher's answers on the run's images, and what fine-tuning learns from them."""

    record: TeacherRecord
    probabilities: dict[str, np.ndarray]  # split → (N, K) in the run's class order
    unlabelled: LabelledFiles  # the usable unlabelled images, their targets the teacher's probabilities
    # `--prune` with a teacher of the run's architecture: its weights (classifier in the run's class order),
    # which fine-tuning prunes and starts from instead of the ImageNet backbone (see `starting_weights`)
    weights: dict[str, np.ndarray] | None = None

    def taught(self, task: Task, files: LabelledFiles, splits: Sequence[str]) -> LabelledFiles:
        """The training files of `splits` with soft targets, followed by the unlabelled images.

        Example:
            >>> from tlearn.evaluation.tasks import SINGLE_LABEL
            >>> record = TeacherRecord(model="t", backbone="b", mode="linear", engine="torch", share=0.5,
            ...                        taught_images=1)
            >>> teacher = Teacher(record, {"train": np.array([[0.2, 0.8]])}, LabelledFiles([], np.empty((0, 2))))
            >>> files = LabelledFiles([Path("a.jpg")], np.array([0]))
            >>> teacher.taught(SINGLE_LABEL, files, ["train"]).labels.round(3)
            array([[0.6, 0.4]], dtype=float32)
        """
        answers = np.concatenate([self.probabilities[split] for split in splits])
        targets = task.taught_targets(files.labels, answers, self.record.share)
        labels = np.concatenate([targets, self.unlabelled.labels.astype(np.float32)])
        return LabelledFiles([*files.paths, *self.unlabelled.paths], labels)


def consult_teacher(config: TrainConfig, prepared: PreparedData, progress: Progress) -> Teacher:
    """Load `config.teacher` and collect its answers on every labelled split and on `config.unlabelled`.

    Raises:
        ModelFileError: the teacher is not a tlearn model.
        DataError: the teacher answers another task or other classes, cannot read one of the run's images, or
            the unlabelled folder holds no usable image.
    """
    started = time.perf_counter()
    engine = load_engine(config.teacher, device=config.device)
    task, classes = prepared.task, prepared.classes
    _check_fits(config.teacher, engine, task, classes)
    columns = [engine.classes.index(name) for name in classes]  # the teacher's outputs in the run's class order
    options = PredictOptions(batch_size=config.batch_size, workers=config.workers)
    splits = ["train", *prepared.evaluated]
    progress.info(f"teacher: {config.teacher} answers the {sum(len(prepared.targets[s]) for s in splits)} images")
    probabilities = {}
    for split in splits:
        paths = prepared.files(split).paths
        answers, failures = engine.predict_files_probabilities(paths, options, progress=progress)
        if failures:
            position, reason = next(iter(failures.items()))
            raise DataError(f"{paths[position]}: the teacher could not read it ({reason})")
        probabilities[split] = answers[:, columns].astype(np.float32)
    unlabelled, skipped = _unlabelled(config, prepared, engine, options, columns, progress)
    thresholds = engine.config.thresholds
    thresholds = [thresholds[column] for column in columns] if thresholds else None
    accuracy = {
        split: round(float(task.right(probabilities[split], prepared.targets[split], thresholds).mean()), 6)
        for split in prepared.evaluated
    }
    weights = starting_weights(config, engine, prepared.info.arch, columns)
    record = TeacherRecord(
        model=str(config.teacher),
        backbone=engine.config.backbone.get("name", engine.config.arch),
        mode=engine.config.mode,
        engine=engine.engine,
        share=config.teacher_share,
        taught_images=len(prepared.targets["train"]),
        unlabelled_images=len(unlabelled.paths),
        unlabelled_skipped=skipped,
        accuracy=accuracy,
        seconds=round(time.perf_counter() - started, 3),
        starts_pruning=weights is not None,
    )
    shown = ", ".join(f"{split} accuracy {value:.3f}" for split, value in accuracy.items())
    extra = f", {len(unlabelled.paths)} unlabelled images" if config.unlabelled is not None else ""
    progress.info(
        f"teacher: {record.backbone} ({record.mode}, {record.engine}): {shown}; fine-tuning learns "
        f"{1 - record.share:.0%} from the labels, {record.share:.0%} from the teacher{extra}"
    )
    if weights is not None:
        progress.info("teacher: fine-tuning prunes the teacher's own network and starts from it")
        if "test" in prepared.evaluated and _learnt_from_this_folder(config):
            progress.info(
                "teacher: warning: it learnt from every image of this folder (--final-fit all), this run's test "
                "split included, so the test figure is optimistic; teach with a run trained with --final-fit "
                "train+val, or measure on other images with `tlearn evaluate`"
            )
    return Teacher(record, probabilities, unlabelled, weights)


def starting_weights(
    config: TrainConfig, engine: InferenceEngine, arch: str, columns: list[int]
) -> dict[str, np.ndarray] | None:
    """With `--prune`, the teacher's weights when it is a network of the run's architecture (a model folder on
    torch), its classifier's rows in the run's class order; else None (pruning starts from the ImageNet backbone).

    Pruning a network already fitted to the data keeps the channels this data needs, and recovery starts from
    its answers: on mri, Lite0 pruned to 62% of its compute lost 6.8 points pruned from ImageNet's weights
    (benchmarks/results/prune-from-imagenet.json; from the teacher: prune.json).
    """
    if config.prune is None or engine.engine != "torch" or engine.config.arch != arch or engine.config.pruned:
        return None
    from safetensors.numpy import load_file  # deferred: only pruning from a teacher reads its weights

    weights = load_file(model_folder(local_model(config.teacher)) / WEIGHTS_FILE)
    for key in engine.config.classifier_keys:
        weights[key] = weights[key][columns]
    return weights


def _learnt_from_this_folder(config: TrainConfig) -> bool:
    """Whether the teacher is a run on the same data that shipped a model fitted on all of it (its test split,
    which is this run's, included). False when its run records cannot say."""
    run_dir = model_folder(local_model(config.teacher)).parent
    try:
        summary = read_run_summary(run_dir / SUMMARY_FILE)
        settings = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    if summary is None or summary.final_fit != "all" or not isinstance(settings, dict):
        return False
    return str(settings.get("data")) == str(config.data)


def _check_fits(name: str | None, engine: InferenceEngine, task: Task, classes: list[str]) -> None:
    """The teacher must answer the run's task over the run's classes (in any order)."""
    teacher_task = engine.config.task_type
    if teacher_task != task:
        raise DataError(f"{name}: the teacher is a {teacher_task.title} model and this data is {task.title}")
    missing, extra = sorted(set(classes) - set(engine.classes)), sorted(set(engine.classes) - set(classes))
    if missing or extra:
        parts = [f"only the data has {', '.join(missing)}"] if missing else []
        parts += [f"only the teacher has {', '.join(extra)}"] if extra else []
        raise DataError(f"{name}: the teacher's classes are not the data's ({'; '.join(parts)})")


def _unlabelled(
    config: TrainConfig,
    prepared: PreparedData,
    engine: InferenceEngine,
    options: PredictOptions,
    columns: list[int],
    progress: Progress,
) -> tuple[LabelledFiles, int]:
    """The unlabelled images the teacher could answer, with its answers, and how many were skipped."""
    empty = LabelledFiles([], np.empty((0, len(columns)), dtype=np.float32))
    if config.unlabelled is None:
        return empty, 0
    found = list_image_files([config.unlabelled], follow_links=config.follow_links)
    labelled = {digest for digest in prepared.checked.content_hashes if digest}
    usable = [path for path in found if _digest(path) not in labelled]
    answers, failures = engine.predict_files_probabilities(usable, options, progress=progress)
    kept = [position for position in range(len(usable)) if position not in failures]
    if not kept:
        raise DataError(
            f"{config.unlabelled}: no unlabelled image to learn from ({len(found)} found, "
            f"{len(found) - len(usable)} copies of the run's labelled images, {len(failures)} unreadable)"
        )
    files = LabelledFiles([usable[p] for p in kept], answers[kept][:, columns].astype(np.float32))
    return files, len(found) - len(kept)


def _digest(path: Path) -> str | None:
    """The file's content hash as the embedding cache computes it (None when unreadable: the teacher says why)."""
    try:
        return hashlib.sha256(read_file_bytes(path)).hexdigest()
    except ImageDecodeError:
        return None
