"""Embeddings for a list of image files: from the cache when possible, else decoded and computed once.

This is the fast path of tlearn. Files are identified by the SHA-256 of their bytes, so renamed or copied
images are recognised, and identical files are decoded once. Cache misses start decoding in worker processes
immediately; torch and the backbone are only loaded when there is something to compute, so a run whose
embeddings are all cached never imports torch at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlearn.backbones.cache import EmbeddingCache, RejectCache, file_sha256
from tlearn.backbones.registry import BackboneInfo, BackboneRef, StoredBackbone
from tlearn.data.decoding import BatchDecoder, default_workers
from tlearn.data.images import DECODER_VERSION, DEFAULT_MAX_IMAGE_PIXELS
from tlearn.data.preprocess import Preprocessing
from tlearn.util.progress import Progress


@dataclass
class EmbeddingResult:
    """Embeddings of the files that could be used, and why the others could not."""

    embeddings: np.ndarray  # (N, D) float32, one row per file; rows of failed files are zero
    content_hashes: list[str | None]  # per file; None when the file could not be read
    failures: dict[int, str]  # file position → reason
    cache_hits: int = 0
    computed: int = 0
    seconds: float = 0.0
    corrupt_cache_entries: int = 0
    info: BackboneInfo | None = None


@dataclass
class FeatureExtractor:
    """Computes and caches embeddings of one backbone.

    Example:
        >>> extractor = FeatureExtractor(resolve_backbone("lite0"), cache_root(), device="cpu")  # doctest: +SKIP
        >>> result = extractor.embed_files([Path("ant.jpg")], progress=Progress())  # doctest: +SKIP
    """

    ref: BackboneRef
    cache_root: Path
    device: str = "auto"
    batch_size: int = 32
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # Called once the backbone starts computing (torch releases the GIL then): a caller can start work of
    # its own in the background there, e.g. importing what it needs next.
    on_compute_start: Callable[[], None] | None = None
    _backbone: object | None = field(default=None, init=False, repr=False)

    def backbone(self, progress: Progress):  # -> tlearn.backbones.timm_models.Backbone
        """The torch backbone, built on first use (this is where torch gets imported)."""
        if self._backbone is None:
            from tlearn.backbones.devices import resolve_device
            from tlearn.backbones.timm_models import load_backbone  # deferred: torch + timm take seconds to import

            self._backbone = load_backbone(
                self.ref, cache_root=self.cache_root, device=resolve_device(self.device), progress=progress
            )
        return self._backbone

    def info(self, progress: Progress) -> BackboneInfo:
        """Backbone facts from the cache, building the backbone only if it was never built."""
        stored = StoredBackbone(self.cache_root, self.ref.key).info()
        return stored if stored is not None else self.backbone(progress).info

    def stored_weights(self, progress: Progress) -> dict[str, np.ndarray]:
        """The backbone's state dict as NumPy arrays, from the cache (stored there when first built)."""
        weights = StoredBackbone(self.cache_root, self.ref.key).weights()
        if weights is None:
            # Cache entry damaged or removed since the backbone was built: rebuild it from the source.
            from tlearn.backbones.devices import resolve_device
            from tlearn.backbones.timm_models import load_backbone

            load_backbone(self.ref, cache_root=self.cache_root, device=resolve_device("cpu"), progress=progress)
            weights = StoredBackbone(self.cache_root, self.ref.key).weights()
        if weights is None:
            raise OSError(f"cannot store backbone weights under {self.cache_root} (is it writable?)")
        return weights

    def embed_files(self, paths: list[Path], *, progress: Progress) -> EmbeddingResult:
        """Embeddings for `paths` (cache first), with per-file failure reasons for unusable files."""
        started = time.perf_counter()
        preprocessing = self.ref.known_preprocessing(self.cache_root) or self.backbone(progress).info.preprocessing
        embeddings_cache = EmbeddingCache(
            self.cache_root, self._namespace(preprocessing), self._description(preprocessing)
        )
        rejects = RejectCache(self.cache_root, f"v{DECODER_VERSION}-max{self.max_pixels}")

        hashes, failures = _hash_files(paths)
        found: dict[str, np.ndarray] = {}
        missing: dict[str, Path] = {}  # content hash → one file with that content
        for position, content_hash in enumerate(hashes):
            if content_hash is None or content_hash in found or content_hash in missing:
                continue
            cached = embeddings_cache.get(content_hash)
            if cached is not None:
                found[content_hash] = cached
            elif (reason := rejects.get(content_hash)) is not None:
                failures[position] = reason
            else:
                missing[content_hash] = paths[position]
        hits = len(found)

        if missing:
            computed, reasons = self._compute(missing, preprocessing, embeddings_cache, rejects, progress)
            found.update(computed)
            for position, content_hash in enumerate(hashes):
                if content_hash in reasons:
                    failures[position] = reasons[content_hash]
        for position, content_hash in enumerate(hashes):
            if content_hash is not None and content_hash not in found and position not in failures:
                failures[position] = rejects.get(content_hash) or "could not be decoded"

        info = self._backbone.info if self._backbone is not None else self.info(progress)
        matrix = np.zeros((len(paths), info.num_features), dtype=np.float32)
        for position, content_hash in enumerate(hashes):
            if position not in failures:
                matrix[position] = found[content_hash]
        return EmbeddingResult(
            embeddings=matrix,
            content_hashes=hashes,
            failures=dict(sorted(failures.items())),
            cache_hits=hits,
            computed=len(missing),
            seconds=time.perf_counter() - started,
            corrupt_cache_entries=embeddings_cache.corrupt_entries,
            info=info,
        )

    def _compute(
        self,
        missing: dict[str, Path],
        preprocessing: Preprocessing,
        embeddings_cache: EmbeddingCache,
        rejects: RejectCache,
        progress: Progress,
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Decode (in workers, started first) and embed the missing contents; cache both outcomes."""
        content_hashes = list(missing)
        workers = self.workers if self.workers is not None else default_workers(accelerator=self.device == "cuda")
        computed: dict[str, np.ndarray] = {}
        reasons: dict[str, str] = {}
        with BatchDecoder(
            [missing[h] for h in content_hashes],
            preprocessing,
            batch_size=self.batch_size,
            workers=workers,
            max_pixels=self.max_pixels,
        ) as batches:
            backbone = self.backbone(progress)  # imports torch while the workers decode
            if self.on_compute_start is not None:
                self.on_compute_start()
            with progress.bar(total=len(content_hashes), desc="embedding images") as bar:
                for batch in batches:
                    for position, reason in batch.failures:
                        reasons[content_hashes[position]] = reason
                        rejects.put(content_hashes[position], reason)
                    if len(batch.positions):
                        for position, embedding in zip(batch.positions, backbone.embed(batch.pixels), strict=True):
                            computed[content_hashes[position]] = embedding
                            embeddings_cache.put(content_hashes[position], embedding)
                    bar.update(len(batch.positions) + len(batch.failures))
        return computed, reasons

    def _namespace(self, preprocessing: Preprocessing) -> str:
        return f"{self.ref.key[:12]}-{preprocessing.fingerprint()[:12]}"

    def _description(self, preprocessing: Preprocessing) -> dict:
        return {"backbone": self.ref.describe(), "preprocessing": preprocessing.to_dict(), "embedding": "pre_logits"}


def _hash_files(paths: list[Path]) -> tuple[list[str | None], dict[int, str]]:
    hashes: list[str | None] = []
    failures: dict[int, str] = {}
    for position, path in enumerate(paths):
        try:
            hashes.append(file_sha256(path))
        except OSError as error:
            hashes.append(None)
            failures[position] = f"cannot read file ({error.strerror or error})"
    return hashes, failures
