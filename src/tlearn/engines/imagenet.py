"""What the original ImageNet model says about images: the "before" of the report's before/after panel and
of `tlearn.imagenet_predictions`.

The backbone's original classifier is kept beside its weights in the cache (`StoredBackbone`), and applied
to an image's embedding it gives the original ImageNet logits. So the "before" view costs no more than the
embeddings: training computes it from the embeddings it holds anyway, evaluation from the cache, and both
save it in the run folder (`imagenet.json`) for the report, which only reads files. Class names come from
timm's own ImageNet-1k tables, read from the installed package (offline) without importing timm, which
would import torch.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import (
    DEFAULT_BACKBONE,
    BackboneInfo,
    BackboneRef,
    resolve_backbone,
    resolve_described,
)
from tlearn.engines.base import Prediction
from tlearn.errors import BackboneError, TlearnError
from tlearn.runs.layout import sample_rows
from tlearn.util.numeric import softmax
from tlearn.util.progress import Progress

IMAGENET_CLASSES = 1000
BEFORE_AFTER_SAMPLES = 8  # sample images the report shows with the original ImageNet model's answers

# One image's answer: (class name, probability) pairs, most probable first; empty if the file is unreadable.
Answer = list[tuple[str, float]]


@functools.cache
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in output order, as timm's `ImageNetInfo().index_to_description`.

    Example:
        >>> imagenet_class_names()[310]
        'ant, emmet, pismire'
    """
    spec = importlib.util.find_spec("timm")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise BackboneError("timm is not installed; ImageNet class names come from its data files")
    tables = Path(spec.origin).parent / "data" / "_info"
    synsets = (tables / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
    with open(tables / "imagenet_synset_to_lemma.txt", encoding="utf-8", newline="") as handle:
        lemmas = dict(csv.reader(handle, delimiter="\t"))
    return [lemmas[synset] for synset in synsets]


def imagenet_predictions(
    images: Sequence[str | Path],
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    top_k: int = 3,
    quiet: bool = False,
) -> list[Prediction]:
    """What the original ImageNet model — the backbone with its own 1000-class head — says about image files.

    The "before" of transfer learning: named ImageNet-1k classes, to set beside what a trained classifier
    answers. Embeddings go through the cache, so images a run has already seen cost nothing, and a fully
    cached call never imports torch.

    Args:
        images: image files.
        backbone: an embedded backbone (`lite0`, ...) or any timm model with an ImageNet-1k head.
        weights: a local checkpoint to use instead of the embedded or downloaded ImageNet weights.
        top_k: classes per image.
        quiet: no progress bar or status lines.

    Returns:
        One `Prediction` per file, in order; an unreadable file's has `error` set.

    Raises:
        BackboneError: unknown backbone, or its original classifier is not ImageNet-1k's.

    Example:
        >>> before = imagenet_predictions(["ant.jpg"], top_k=2)  # doctest: +SKIP
        >>> before[0].labels  # doctest: +SKIP
        ['ant, emmet, pismire', 'ground beetle, carabid beetle']
    """
    paths = [Path(image) for image in images]
    return _predictions(resolve_backbone(backbone, weights), paths, top_k, Progress(quiet=quiet))


def imagenet_top_k(
    backbone: Mapping[str, str], paths: Sequence[Path], *, k: int = 3, progress: Progress | None = None
) -> list[Answer]:
    """The original ImageNet model's top-k classes for each image, for a trained model's own backbone.

    Args:
        backbone: the model's backbone as recorded in its config (`ModelConfig.backbone`).
        paths: image files.
        k: classes per image.
        progress: status lines (embeddings missing from the cache are computed, which loads the backbone).

    Returns:
        One answer per path, in order.

    Raises:
        BackboneError: the backbone cannot be found again, or its original classifier is not ImageNet-1k's.

    Example:
        >>> imagenet_top_k(read_config("runs/ants/model").backbone, [Path("ant.jpg")])  # doctest: +SKIP
        [[('ant, emmet, pismire', 0.91), ('ground beetle, carabid beetle', 0.02), ('bee', 0.01)]]
    """
    predictions = _predictions(resolve_described(backbone), list(paths), k, progress or Progress(quiet=True))
    return [list(zip(prediction.labels, prediction.probabilities, strict=True)) for prediction in predictions]


def imagenet_answers(
    embeddings: np.ndarray, info: BackboneInfo, weights: Mapping[str, np.ndarray], *, k: int = 3
) -> list[Answer]:
    """The original ImageNet model's top-k classes for embeddings the caller already has (training does).

    Args:
        embeddings: (N, num_features) pre-logits embeddings of the backbone.
        info: the backbone's facts (which state-dict entries are its original classifier).
        weights: the backbone's stored state dict (`FeatureExtractor.stored_weights`).
        k: classes per image.

    Raises:
        BackboneError: the backbone's original classifier is not ImageNet-1k's.
    """
    if info.pretrained_classes != IMAGENET_CLASSES:
        raise BackboneError(
            f"backbone {info.arch}: its original classifier has {info.pretrained_classes} classes, "
            f"not ImageNet-1k's {IMAGENET_CLASSES}"
        )
    weight_key, bias_key = info.classifier_keys
    probabilities = softmax(embeddings @ weights[weight_key].T + weights[bias_key])  # (N, 1000)
    names = imagenet_class_names()
    answers = []
    for row in probabilities:
        best = np.argsort(-row)[:k]
        answers.append([(names[i], float(row[i])) for i in best])
    return answers


def imagenet_samples(
    rows: Sequence[dict[str, Any]], answers_for: Callable[[list[str]], list[Answer]]
) -> dict[str, Any]:
    """What `imagenet.json` holds: the original ImageNet model's answers for the report's sample images.

    Training and evaluation save the same thing for the same sample rows (`sample_rows`, which the report
    shows); only how the answers are computed differs — from the embeddings training holds
    (`imagenet_answers`), or from the files through the embedding cache (`imagenet_top_k`) — so the caller
    passes that as `answers_for`: the samples' paths (as in `rows`) → one answer each, in order.

    Args:
        rows: predictions.csv rows of the set the report shows (`path` and `label` are read).
        answers_for: the answers for the chosen paths; may raise a `TlearnError` (`BackboneError`).

    Returns:
        `{"answers": {path: answer}}` (images that could not be read left out), or `{"reason": why}` when the
        original model cannot answer (its classifier is not ImageNet-1k's, its weights cannot be found again):
        the "before" view is then missing from the report, and the run or evaluation still succeeds.

    Example:
        >>> rows = [{"path": "ants/1.jpg", "label": "ants"}, {"path": "bees/1.jpg", "label": "bees"}]
        >>> imagenet_samples(rows, lambda paths: [[("ant, emmet, pismire", 0.9)], []])
        {'answers': {'ants/1.jpg': [('ant, emmet, pismire', 0.9)]}}
        >>> def refused(paths):
        ...     raise BackboneError("backbone x: its original classifier has 21843 classes")
        >>> imagenet_samples(rows, refused)
        {'reason': 'backbone x: its original classifier has 21843 classes'}
    """
    samples = [row["path"] for row in sample_rows(rows, BEFORE_AFTER_SAMPLES)]
    try:
        answers = answers_for(samples)
    except TlearnError as error:
        return {"reason": str(error)}
    return {"answers": {path: answer for path, answer in zip(samples, answers, strict=True) if answer}}


def _predictions(ref: BackboneRef, paths: list[Path], k: int, progress: Progress) -> list[Prediction]:
    """Top-k ImageNet classes per file: the cached embeddings through the backbone's original classifier."""
    extractor = FeatureExtractor(ref, cache_root(), device="cpu", workers=0)
    info = extractor.info(progress)
    if info.pretrained_classes != IMAGENET_CLASSES:
        imagenet_answers(np.empty((0, info.num_features), dtype=np.float32), info, {})  # raises the refusal
    embedded = extractor.embed_files(paths, progress=progress)
    answers = imagenet_answers(embedded.embeddings, info, extractor.stored_weights(progress), k=k)
    return [
        Prediction(str(path), error=embedded.failures[position])
        if position in embedded.failures
        else Prediction(str(path), [name for name, _ in answer], [probability for _, probability in answer])
        for position, (path, answer) in enumerate(zip(paths, answers, strict=True))
    ]
