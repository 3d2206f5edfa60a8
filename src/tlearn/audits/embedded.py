"""A data folder's usable images with their (cached) embeddings: what the audit and the selection work on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import BackboneInfo, BackboneRef
from tlearn.data.discovery import DataSource
from tlearn.evaluation.tasks import Task, task_for
from tlearn.util.progress import Progress


@dataclass
class EmbeddedImages:
    """Embeddings, labels, paths and splits of the images that could be decoded, in discovery order."""

    source: DataSource
    ref: BackboneRef
    info: BackboneInfo
    embeddings: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) class indices into source.classes (an image's first label)
    targets: np.ndarray  # the task's targets: `labels` for single-label data, (N, K) label indicators for label sets
    relpaths: list[str]  # relative to source.root, '/'-separated
    splits: list[str]
    content_hashes: list[str]
    skipped: list[dict[str, str]]  # {"path", "reason"} of files that could not be used
    seconds: float  # embedding wall time (near zero when everything was cached)
    computed: int  # images the backbone had to run on (the rest came from the cache)

    @property
    def classes(self) -> list[str]:
        """Class names in index order."""
        return self.source.classes

    @property
    def task(self) -> Task:
        """Single-label, or multi-label when some image carries several labels."""
        return task_for("auto", has_label_sets=self.source.has_label_sets)


def embed_source(
    source: DataSource,
    ref: BackboneRef,
    *,
    splits: tuple[str, ...] | None = None,
    device: str = "auto",
    progress: Progress,
) -> EmbeddedImages:
    """Embed the images of `source` (only those in `splits`, when given) through the cache.

    Example:
        >>> embedded = embed_source(discover("data/"), resolve_backbone("lite0"), progress=Progress())  # doctest: +SKIP
        >>> embedded.embeddings.shape  # doctest: +SKIP
        (245, 1280)
    """
    images = [image for image in source.images if splits is None or image.split in splits]
    task = task_for("auto", has_label_sets=source.has_label_sets)
    # The crop a training run's `--crop auto` uses (squash for label sets): the same embeddings, from the cache.
    extractor = FeatureExtractor(ref, cache_root(), device=device, crop_mode=task.crop_mode)
    result = extractor.embed_files([image.path for image in images], progress=progress)
    usable = [position for position in range(len(images)) if position not in result.failures]
    index = {name: label for label, name in enumerate(source.classes)}
    return EmbeddedImages(
        source=source,
        ref=ref,
        info=result.info,
        embeddings=result.embeddings[usable],
        labels=np.array([index[images[p].label] for p in usable], dtype=np.int64),
        targets=task.targets([[index[name] for name in images[p].labels] for p in usable], len(source.classes)),
        relpaths=[images[p].relpath for p in usable],
        splits=[images[p].split for p in usable],
        content_hashes=[result.content_hashes[p] or "" for p in usable],
        skipped=[{"path": images[p].relpath, "reason": reason} for p, reason in result.failures.items()],
        seconds=result.seconds,
        computed=result.computed,
    )
