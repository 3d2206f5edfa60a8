"""From discovered images to the data a run learns from: embeddings through the cache, the data check, the task's
targets, and with `--backbone auto` the backbone those embeddings come from.

The pipeline calls `prepare(context, source, backbones)` once: the first (cheapest) backbone embeds every image
and the data check runs on its outcome (which files decode, their content hashes); with several candidates,
`tlearn.training.backbone_choice` compares them on the train + val images and, when another one wins, it
embeds every image again (the compared images come from the cache) and the data is checked on its outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import EmbeddingResult, FeatureExtractor
from tlearn.backbones.registry import BackboneRef
from tlearn.data.checks import CheckedData, check_data, found_line, summary_lines
from tlearn.data.discovery import DataSource
from tlearn.errors import DataError
from tlearn.evaluation.tasks import Task, task_for
from tlearn.runs.summary import EmbeddingRecord
from tlearn.training.backbone_choice import BackboneChoice, CandidateFeatures, compare_backbones, comparison_rows
from tlearn.training.candidates import PreparedData
from tlearn.training.context import TrainingContext
from tlearn.training.split_rows import split_views
from tlearn.util.background import import_in_background

EVALUATED_SPLITS = ("val", "test")
SLOW_TO_SERVE = 2.0  # a chosen backbone at least this many times Lite0's compute says so in the run and report
# Needed after the embeddings (the head, the metrics, the report): imported while the backbone computes.
MODULES_NEEDED_LATER = ("sklearn.linear_model", "sklearn.metrics", "tlearn.report.figures", "jinja2")


@dataclass(frozen=True)
class Prepared:
    """The data a run learns from, how its backbone was chosen (None: the backbone was named), and the data of
    the backbone fine-tuning starts from.

    Fine-tuning starts from the cheapest candidate (Lite0 under `--backbone auto`) whatever the linear head's
    choice: on signs a fine-tuned Lite1 scored 95.7% against Lite0's 96.4% in 2.4x the time, and the budget
    buys a larger network fewer epochs; the linear head takes the features its comparison chose.
    """

    data: PreparedData
    choice: BackboneChoice | None = None
    tuned: PreparedData | None = None  # None: the same as `data`

    @property
    def finetune_data(self) -> PreparedData:
        """The data (and backbone) fine-tuning learns on."""
        return self.tuned or self.data


def prepare(context: TrainingContext, source: DataSource, backbones: Sequence[BackboneRef]) -> Prepared:
    """Embed and check the data with the first backbone; with several, choose one and prepare with it.

    Raises:
        DataError: a class has no usable training image, the validation split is empty, or the settings do not
            fit the task (a reject rule for label sets).
    """
    prepared = _embed_and_check(context, source, backbones[0])
    if len(backbones) == 1:
        return Prepared(prepared)
    choice = _choose_backbone(context, prepared, backbones)
    cheapest = prepared
    if choice.chosen:  # the same files, checked again on this backbone's outcome (the summary was printed)
        prepared = _embed_and_check(context, source, backbones[choice.chosen], announce=False)
    cost = backbones[choice.chosen].relative_cost
    if cost is not None and cost >= SLOW_TO_SERVE:
        choice = BackboneChoice(
            choice.chosen,
            choice.trials,
            f"{choice.reason}. It costs {cost:.1f}x {backbones[0].name}'s compute per image: expect about "
            f"{cost:.1f}x slower predictions and serving",
        )
    # Fine-tuning is compared with the linear head on the same validation images: only when both backbones
    # kept the same images can it start from the cheapest.
    tuned = cheapest if cheapest is not prepared and cheapest.checked.positions == prepared.checked.positions else None
    if tuned is not None and context.config.mode != "linear":
        choice = BackboneChoice(
            choice.chosen,
            choice.trials,
            f"{choice.reason}; fine-tuning starts from {backbones[0].name}, the cheapest (on the suite a larger "
            "fine-tuned backbone did not score higher in the same budget)",
        )
    context.progress.info(f"backbone: {choice.reason}")
    return Prepared(prepared, choice, tuned)


def _choose_backbone(
    context: TrainingContext, prepared: PreparedData, backbones: Sequence[BackboneRef]
) -> BackboneChoice:
    """Compare the candidates' linear heads on train + val (a sample of them on large folders)."""
    config = context.config
    dev_x, dev_t = prepared.stack("train", "val")
    rows = comparison_rows(dev_t, prepared.task, config.seed)
    if rows is None:
        return BackboneChoice(
            0, [], f"{backbones[0].name}: {len(dev_t)} train + val images are too few to tell backbones apart"
        )
    images = prepared.checked.source.images
    paths = [images[p].path for split in ("train", "val") for p in prepared.checked.positions[split]]
    candidates = [CandidateFeatures(backbones[0].name, dev_x[rows], prepared.embedding.seconds)]
    compared = [0]  # positions in `backbones` of the candidates
    for position, ref in enumerate(backbones[1:], start=1):
        embedded = _embed(context, _extractor(context, ref, prepared.task), [paths[row] for row in rows])
        if embedded.failures:  # another input size made a file unusable: compare only on equal terms
            context.progress.info(f"backbone {ref.name} left out: {len(embedded.failures)} image(s) fail with it")
            continue
        candidates.append(CandidateFeatures(ref.name, embedded.embeddings, embedded.seconds))
        compared.append(position)
    choice = compare_backbones(
        candidates,
        dev_t[rows],
        len(prepared.classes),
        prepared.task,
        balanced=prepared.balanced,
        folds=config.cv_folds,
        seed=config.seed,
        results=context.results,
    )
    return BackboneChoice(compared[choice.chosen], choice.trials, choice.reason)


def _embed(context: TrainingContext, extractor: FeatureExtractor, paths: list[Path]) -> EmbeddingResult:
    """Embeddings of `paths` through the cache; under torchrun each rank first fills the cache with its share."""
    dist, progress = context.dist, context.progress
    if dist.enabled:
        extractor.embed_files(dist.shard(paths), progress=progress)
        dist.barrier()
    embedded = extractor.embed_files(paths, progress=progress)
    progress.info(
        f"embeddings: {embedded.cache_hits} cached, {embedded.computed} computed "
        f"({embedded.seconds:.1f} s, backbone {extractor.ref.arch})"
    )
    return embedded


def _extractor(context: TrainingContext, ref: BackboneRef, task: Task) -> FeatureExtractor:
    config = context.config
    return FeatureExtractor(
        ref,
        cache_root(),
        device=config.device,
        batch_size=config.batch_size,
        workers=config.workers,
        max_pixels=config.max_image_pixels,
        on_compute_start=lambda: import_in_background(MODULES_NEEDED_LATER),
        engine=config.embedding_engine,
        crop_mode=task.crop_mode if config.crop == "auto" else config.crop,
        ray=config.ray,
    )


def _embed_and_check(
    context: TrainingContext, source: DataSource, ref: BackboneRef, *, announce: bool = True
) -> PreparedData:
    """Embed every image through the cache, check what is usable (printing the data summary when `announce`),
    and build the task's targets."""
    config, progress = context.config, context.progress
    task = task_for(config.task, has_label_sets=source.has_label_sets)
    if config.reject != "off" and task.reject_note:
        raise DataError(f"{source.root}: {task.reject_note}")
    extractor = _extractor(context, ref, task)
    announced = found_line(source)
    if announce:
        progress.info(announced)
    embedded = _embed(context, extractor, [image.path for image in source.images])
    checked = check_data(source, embedded.content_hashes, embedded.failures)
    for line in summary_lines(checked.report, announced) if announce else []:
        progress.info(line)
    _require_trainable(checked)
    splits = ("train", "val", "test")
    targets = {split: task.targets(checked.label_indices(split), len(source.classes)) for split in splits}
    balanced = config.balance == "on" or (config.balance == "auto" and checked.report["imbalance"]["imbalanced"])
    return PreparedData(
        ref=ref,
        extractor=extractor,
        info=embedded.info,
        checked=checked,
        classes=source.classes,
        task=task,
        features=split_views(embedded.embeddings, {split: checked.positions[split] for split in splits}),
        targets=targets,
        evaluated=[split for split in EVALUATED_SPLITS if len(targets[split])],
        embedding=EmbeddingRecord(
            cache_hits=embedded.cache_hits,
            computed=embedded.computed,
            seconds=round(embedded.seconds, 3),
            corrupt_cache_entries=embedded.corrupt_cache_entries,
            engine=embedded.engine or None,
            files_read=embedded.files_read,
            onnx_exported=embedded.onnx_exported,
        ),
        balanced=balanced,
        results=context.results,
    )


def _require_trainable(checked: CheckedData) -> None:
    """Every class needs training images and the validation split must not be empty."""
    train_counts = checked.counts("train")
    where = checked.source.root
    for name, count in train_counts.items():
        if count == 0:
            raise DataError(
                f"{where}: class {name!r} has no usable training images left after skipping bad files "
                "(see data_report.json)"
            )
    if not checked.positions["val"]:
        raise DataError(f"{where}: the validation split is empty; add images or give a larger val share (--split)")
