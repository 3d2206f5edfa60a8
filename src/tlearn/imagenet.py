"""What the original ImageNet model says about images: the "before" of the report's before/after panel.

The backbone's original classifier is kept beside its weights in the cache (`StoredBackbone`), and applied
to an image's embedding it gives the original ImageNet logits. So the "before" view costs no more than the
embeddings, which the cache usually holds already: a linear run's report computes it without importing
torch. Class names come from timm's own ImageNet-1k tables, read from the installed package (offline)
without importing timm, which would import torch.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tlearn.backbone_registry import resolve_described
from tlearn.cache import cache_root
from tlearn.errors import BackboneError
from tlearn.features import FeatureExtractor
from tlearn.head import softmax
from tlearn.progress import Progress

IMAGENET_CLASSES = 1000

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


def imagenet_top_k(
    backbone: Mapping[str, str], paths: Sequence[Path], *, k: int = 3, progress: Progress | None = None
) -> list[Answer]:
    """The original ImageNet model's top-k classes for each image.

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
    progress = progress or Progress(quiet=True)
    ref = resolve_described(backbone)
    extractor = FeatureExtractor(ref, cache_root(), device="cpu", workers=0)
    info = extractor.info(progress)
    if info.pretrained_classes != IMAGENET_CLASSES:
        raise BackboneError(f"backbone {ref.arch}: its original classifier has {info.pretrained_classes} classes, "
                            f"not ImageNet-1k's {IMAGENET_CLASSES}")
    embedded = extractor.embed_files(list(paths), progress=progress)
    weights = extractor.stored_weights(progress)
    weight_key, bias_key = info.classifier_keys
    probabilities = softmax(embedded.embeddings @ weights[weight_key].T + weights[bias_key])  # (N, 1000)
    names = imagenet_class_names()
    answers: list[Answer] = []
    for position, row in enumerate(probabilities):
        best = np.argsort(-row)[:k]
        answers.append([] if position in embedded.failures else [(names[i], float(row[i])) for i in best])
    return answers
