"""Embeddings for a list of image files: from the cache when possible, else decoded and computed once.

This is the fast path of tlearn. Files are identified by the SHA-256 of their bytes, so renamed or copied
images are recognised, and identical files are computed once. A warm run reads no image: the file index maps
each unchanged file (path + stat) to its content hash, and the hash to its cached embedding. Everything else
streams through decoding workers, which start at once and read each file exactly once: they hash the bytes,
skip contents the cache already settles, and decode the rest from those same bytes.

The backbone runs on onnxruntime on a CPU (`tlearn.backbones.onnx_models`: 3x faster here, and torch is never
imported once the backbone's graph is cached) and on PyTorch on a GPU or when asked; torch is only loaded
when there is something to compute and no checked graph. Memory holds the embeddings matrix plus a bounded
number of batches in flight, whatever the number of files. A cache that cannot be written never stops a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from tlearn.backbones.cache import (
    EmbeddingStore,
    FileIndex,
    FileState,
    RejectCache,
    Warn,
    warn_once,
)
from tlearn.backbones.onnx_models import GraphFiles, OnnxBackbone, default_threads
from tlearn.backbones.parquet_store import open_embedding_store
from tlearn.backbones.registry import BackboneInfo, BackboneRef, StoredBackbone
from tlearn.data.decoding import BatchDecoder, DecodedBatch, DecodeTask, default_workers
from tlearn.data.images import DECODER_VERSION, DEFAULT_MAX_IMAGE_PIXELS
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import BackboneError
from tlearn.util.progress import Progress

ENGINE_ENV = "TLEARN_EMBEDDING_ENGINE"  # auto | onnx | torch: the default of `FeatureExtractor.engine`
ENGINES = ("auto", "onnx", "torch")
# "auto" exports the backbone to ONNX (once per backbone and machine) when a run has at least this many images to
# compute with PyTorch already loaded: below it, finishing on PyTorch is quicker for this run, and a smaller run
# leaves the export to the next large one. `python benchmarks/bench_export_breakeven.py` (quiet, 2 cores): export
# + check 6.2 / 5.4 / 5.6 s for Lite0 / Lite1 / Lite2, PyTorch 96 / 71 / 54 images/s, onnxruntime 256 / 160 /
# 132, so the export pays for itself within a run after 947 / 681 / 520 images (it was 200, set when PyTorch
# embedded 6 images/s: a first Lite0 run on hymenoptera's 245 images then lost 4.6 s exporting).
EXPORT_MIN_IMAGES = 1000


class Embedder(Protocol):
    """What computes embeddings: the PyTorch `Backbone` or the `OnnxBackbone`."""

    engine: str
    info: BackboneInfo

    def embed(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass
class EmbeddingResult:
    """Embeddings of the files that could be used, and why the others could not."""

    embeddings: np.ndarray  # (N, D) float32, one row per file; rows of failed files are zero
    content_hashes: list[str | None]  # per file; None when the file could not be read
    failures: dict[int, str]  # file position → reason
    cache_hits: int = 0  # distinct contents found in the cache
    computed: int = 0  # distinct contents sent to decoding
    seconds: float = 0.0
    corrupt_cache_entries: int = 0
    info: BackboneInfo | None = None
    engine: str = ""  # "onnx" or "torch" when something was computed
    files_read: int = 0  # files read and hashed (the others' hashes came from the file index)
    onnx_exported: bool = False  # the backbone's graph was exported and checked during this call


@dataclass
class FeatureExtractor:
    """Computes and caches embeddings of one backbone.

    Args:
        ref: the backbone.
        cache_root: where embeddings, the file index and the backbone's converted forms live (embeddings go to
            the parquet store in `$TLEARN_EMBEDDING_STORE` instead when it is set: `tlearn.backbones.parquet_store`).
        device: auto, cpu, cuda or cuda:N (PyTorch's engine runs on GPUs; onnxruntime on the CPU).
        batch_size: images per model call.
        workers: decoding processes (default: half the cores, most of them with a GPU).
        max_pixels: images with more pixels are refused before decoding.
        on_compute_start: called once the backbone starts computing, so a caller can start work of its own in
            the background (e.g. importing what it needs next).
        engine: "onnx", "torch" or "auto" (onnxruntime on a CPU once its graph is checked; see module doc);
            None reads `$TLEARN_EMBEDDING_ENGINE`, else "auto".
        threads: onnxruntime threads (default: the cores the decoding workers leave free).
        crop_mode: how pictures are fitted to the input ("center", "squash", "border"; None: the backbone's own,
            timm's centre crop). The embeddings' cache and the returned info's preprocessing follow it.
        ray: a Ray cluster's address ("local", "auto", "ray://HOST:PORT") to embed what the cache lacks on
            (backbones/ray_embedding.py); None: this machine.

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
    on_compute_start: Callable[[], None] | None = None
    engine: str | None = None
    threads: int | None = None
    crop_mode: str | None = None
    ray: str | None = None
    _backbone: object | None = field(default=None, init=False, repr=False)
    _onnx: OnnxBackbone | None = field(default=None, init=False, repr=False)

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
        """The backbone's state dict as NumPy arrays, from the cache (stored there when first built).

        When the cache cannot hold them (read-only, full), they come from the backbone built in memory.
        """
        weights = StoredBackbone(self.cache_root, self.ref.key).weights()
        if weights is not None:
            return weights
        if self._backbone is None or self._backbone.source_weights is None:
            # Cache entry damaged or removed since the backbone was built: rebuild it from the source.
            from tlearn.backbones.devices import resolve_device
            from tlearn.backbones.timm_models import load_backbone

            self._backbone = load_backbone(
                self.ref, cache_root=self.cache_root, device=resolve_device(self.device), progress=progress
            )
        return StoredBackbone(self.cache_root, self.ref.key).weights() or self._backbone.source_weights

    def preprocessing(self, progress: Progress) -> Preprocessing:
        """How images are prepared for this backbone: its own data config, with the crop mode asked for."""
        own = self.ref.known_preprocessing(self.cache_root) or self.backbone(progress).info.preprocessing
        return own if self.crop_mode is None else replace(own, crop_mode=self.crop_mode)

    def embed_files(self, paths: Sequence[Path], *, progress: Progress) -> EmbeddingResult:
        """Embeddings for `paths` (cache first), with per-file failure reasons for unusable files."""
        started = time.perf_counter()
        warn = warn_once(lambda message: progress.info(f"warning: {message}"))
        preprocessing = self.preprocessing(progress)
        stored_info = StoredBackbone(self.cache_root, self.ref.key).info()
        stores = _Stores.open(self, preprocessing, stored_info, warn)
        run = _Run(paths)
        try:
            states, unreadable = stores.index.stat(paths)
            run.failures.update(unreadable)
            run.hashes = stores.index.lookup(states)
            self._settle(run, stores, {h for h in run.hashes if h is not None})
            pending = run.unsettled(range(len(paths)))
            if pending:
                self._compute(run, pending, states, stores, preprocessing, progress)
            # Contents a worker found cached, and copies of a file that changed while it was read.
            leftover = run.unsettled(pending)
            if leftover:
                self._settle(run, stores, {run.hashes[p] for p in leftover})
                leftover = run.unsettled(leftover)
            if leftover:
                for position in leftover:
                    run.hashes[position] = None  # hashed again by the worker that decodes it
                no_probe = _Stores(stores.embeddings, stores.rejects, stores.index, None, stores.warn)
                self._compute(run, leftover, states, no_probe, preprocessing, progress)
        finally:
            stores.close()
        info = replace(self._current_info(stored_info, progress), preprocessing=preprocessing)
        return EmbeddingResult(
            embeddings=run.finish(info.num_features),
            content_hashes=run.hashes,
            failures=dict(sorted(run.failures.items())),
            cache_hits=run.cache_hits,
            computed=run.computed,
            seconds=time.perf_counter() - started,
            corrupt_cache_entries=stores.embeddings.corrupt_entries,
            info=info,
            engine=run.engine,
            files_read=run.files_read,
            onnx_exported=run.onnx_exported,
        )

    @staticmethod
    def _settle(run: _Run, stores: _Stores, content_hashes: set[str]) -> None:
        """Fill what the cache holds (an embedding or a lasting verdict) for these contents."""
        content_hashes = content_hashes - set(run.row_of) - set(run.reason_of)
        first = run.first_positions(content_hashes)
        for content_hash, vector in stores.embeddings.get_many(content_hashes):
            run.store_row(first[content_hash], content_hash, vector)
            run.cache_hits += 1
        unsettled = content_hashes - set(run.row_of)
        run.reason_of.update(stores.rejects.get_many(unsettled))

    def _compute(
        self,
        run: _Run,
        pending: list[int],
        states: list[FileState | None],
        stores: _Stores,
        preprocessing: Preprocessing,
        progress: Progress,
    ) -> None:
        """Embed what the cache lacks (on the Ray cluster when `ray` is set); cache both outcomes."""
        # One file per already-known content; unknown files all go, each hashed by the worker that reads it.
        representatives = list({run.hashes[p] or f"#{p}": p for p in pending}.values())
        if self.ray is not None:
            representatives = self._compute_on_ray(run, representatives, states, stores, preprocessing, progress)
        if representatives:
            self._compute_here(run, representatives, states, stores, preprocessing, progress)

    def _compute_here(
        self,
        run: _Run,
        representatives: list[int],
        states: list[FileState | None],
        stores: _Stores,
        preprocessing: Preprocessing,
        progress: Progress,
    ) -> None:
        """Decode (in workers, started first) and embed on this machine."""
        workers = self.workers if self.workers is not None else default_workers(accelerator=self._accelerated())
        with (
            BatchDecoder(
                [run.paths[p] for p in representatives],
                preprocessing,
                batch_size=self.batch_size,
                workers=workers,
                max_pixels=self.max_pixels,
                hash_contents=True,
                skip=stores.probe,
                caller_decodes=self._loads_quickly(),  # else only once loaded: the workers decode meanwhile
            ) as batches,
            progress.bar(total=len(representatives), desc="embedding images") as bar,
        ):
            embedder: Embedder | None = None  # loaded at the first image to compute: a warm run may need none
            export = False
            for batch in batches:
                self._take_batch(run, batch, representatives, states, stores)
                if len(batch.positions) and embedder is None:
                    # Torch, when needed, is imported here while the workers keep decoding ahead.
                    embedder, export = self._embedder(progress, len(representatives), workers)
                    batches.caller_decodes = True  # from now on, waiting for a batch means decoding is behind
                    if self.on_compute_start is not None and not run.compute_started:
                        self.on_compute_start()
                    run.compute_started = True
                if len(batch.positions):
                    vectors = embedder.embed(batch.pixels)
                    run.store_computed([representatives[i] for i in batch.positions], vectors, stores.embeddings)
                    if export:
                        export = False
                        exported = self._export_checked(embedder, batch.pixels, vectors, progress, stores.warn)
                        embedder = exported or embedder
                        run.onnx_exported = embedder.engine == "onnx"
                bar.update(len(batch.positions) + len(batch.failures) + len(batch.known))
        if embedder is not None:
            run.engine = embedder.engine
        stores.embeddings.flush()

    def _compute_on_ray(
        self,
        run: _Run,
        representatives: list[int],
        states: list[FileState | None],
        stores: _Stores,
        preprocessing: Preprocessing,
        progress: Progress,
    ) -> list[int]:
        """Embed `representatives` on the Ray cluster at `self.ray` (backbones/ray_embedding.py); returns those
        left to compute here. The cluster's workers embed with the backbone's checked ONNX graph: where it does
        not exist yet, the first batch is embedded here and the graph exported and checked on it."""
        from tlearn.backbones.ray_embedding import embed_on_ray

        graph = self._checked_graph()
        if graph is None:
            progress.info(f"exporting {self.ref.arch}'s ONNX graph here first (once): the cluster embeds with it")
            first, representatives = representatives[: self.batch_size], representatives[self.batch_size :]
            self._compute_here(run, first, states, stores, preprocessing, progress)
            graph = self._checked_graph()
        if graph is None or not representatives:
            if representatives:
                progress.info(f"embedding on this machine, not on Ray: {self.ref.arch} has no usable ONNX graph")
            return representatives
        files, info = graph
        task = DecodeTask(preprocessing, self.max_pixels, hash_contents=True)
        paths = [run.paths[position] for position in representatives]
        outcomes = embed_on_ray(paths, files, info, task, address=self.ray, batch_size=self.batch_size)
        with progress.bar(total=len(paths), desc="embedding images on Ray") as bar:
            for outcome in outcomes:
                self._take_batch(run, outcome.batch, representatives, states, stores)
                computed = [representatives[index] for index in outcome.batch.positions]
                run.store_computed(computed, outcome.vectors, stores.embeddings)
                bar.update(len(outcome.batch.positions) + len(outcome.batch.failures))
        run.engine = "onnx"
        stores.embeddings.flush()
        return []

    def _checked_graph(self) -> tuple[GraphFiles, BackboneInfo] | None:
        """The backbone's stored ONNX graph and info when the graph passed its check and loads here."""
        stored = StoredBackbone(self.cache_root, self.ref.key).info()
        if stored is None:
            return None
        files = GraphFiles.of(self.cache_root, self.ref.key, stored)
        return (files, stored) if OnnxBackbone.load(files, stored, threads=1) is not None else None

    @staticmethod
    def _take_batch(
        run: _Run, batch: DecodedBatch, representatives: list[int], states: list[FileState | None], stores: _Stores
    ) -> None:
        """Record a batch's content hashes (in the file index too) and its failures (lasting ones cached)."""
        for index, content_hash in batch.content_hashes.items():
            position = representatives[index]
            run.hashes[position] = content_hash
            run.files_read += 1
            if states[position] is not None:
                stores.index.record(states[position], content_hash)
        for index, reason in batch.failures:
            position = representatives[index]
            run.failures[position] = reason
            content_hash = batch.content_hashes.get(index)
            if content_hash is not None:
                run.reason_of[content_hash] = reason
                if index not in batch.transient:
                    stores.rejects.put(content_hash, reason)
        run.computed += len(batch.positions) + len(batch.failures)

    def _embedder(self, progress: Progress, to_compute: int, workers: int) -> tuple[Embedder, bool]:
        """The engine to compute with, and whether to export the backbone to ONNX after its first batch."""
        choice = self._engine_choice()
        if choice == "torch" or self._accelerated():
            return self.backbone(progress), False
        threads = self.threads or default_threads(workers)
        if self._onnx is None:
            stored = StoredBackbone(self.cache_root, self.ref.key).info()
            if stored is not None:
                files = GraphFiles.of(self.cache_root, self.ref.key, stored)
                self._onnx = OnnxBackbone.load(files, stored, threads=threads)
        if self._onnx is not None:
            return self._onnx, False
        backbone = self.backbone(progress)
        failure = GraphFiles.of(self.cache_root, self.ref.key, backbone.info).failure()
        wanted = to_compute >= EXPORT_MIN_IMAGES or self.ray is not None  # a cluster embeds with the graph
        return backbone, choice == "onnx" or (wanted and failure is None)

    def _export_checked(
        self, backbone: Embedder, pixels: np.ndarray, reference: np.ndarray, progress: Progress, warn: Warn
    ) -> OnnxBackbone | None:
        """Export the backbone's graph, check it on this batch against PyTorch's `reference`; None if unusable."""
        from tlearn.backbones.onnx_export import check_against_torch, export_embedding_graph  # imports torch

        files = GraphFiles.of(self.cache_root, self.ref.key, backbone.info)
        progress.info(f"exporting {self.ref.arch} to ONNX for onnxruntime (once; later runs need no torch)")
        started = time.perf_counter()
        threads = self.threads or default_threads(self.workers if self.workers is not None else default_workers())
        try:
            payload, exporter = export_embedding_graph(backbone)
            candidate = OnnxBackbone.from_bytes(payload, backbone.info, threads=threads)
            passed, check = check_against_torch(candidate, pixels, reference)
        except Exception as error:  # exporters and onnxruntime raise many types; the reason is kept and shown
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            passed, check = False, {"reason": f"export failed ({type(error).__name__}: {first})"}
        check["exporter_seconds"] = round(time.perf_counter() - started, 2)
        try:
            if not passed:
                reason = check.get("reason") or (
                    f"its embeddings differ from PyTorch's by {check['max_relative_difference']:.1e} relative "
                    f"(limit {check['limit']:g})"
                )
                progress.info(f"onnxruntime not used for {self.ref.arch}: {reason}; embedding with PyTorch")
                files.save_failure(reason, check)
                return None
            files.save(payload, {**check, "exporter": exporter})
        except OSError as error:
            warn(f"cannot store the backbone's ONNX graph under {files.model.parent} ({error.strerror or error})")
        self._onnx = candidate if passed else None
        return self._onnx

    def _loads_quickly(self) -> bool:
        """Whether the engine to compute with is an onnxruntime graph already checked and stored: it loads in a
        fraction of a second, so the caller may decode while waiting for the first batch; importing torch
        takes seconds, during which the workers decode on their own and the caller's decoding would only
        delay the import."""
        if self._onnx is not None:
            return True
        if self._engine_choice() == "torch" or self._accelerated():
            return False
        stored = StoredBackbone(self.cache_root, self.ref.key).info()
        record = GraphFiles.of(self.cache_root, self.ref.key, stored).read_record() if stored is not None else None
        return bool(record and record.get("passed"))

    def _engine_choice(self) -> str:
        # An explicit engine wins; "auto" (the setting's default) defers to the environment, then decides itself.
        explicit = self.engine if self.engine and self.engine.lower() != "auto" else None
        choice = (explicit or os.environ.get(ENGINE_ENV) or "auto").lower()
        if choice not in ENGINES:
            raise BackboneError(f"embedding engine {choice!r}: expected one of {', '.join(ENGINES)} ({ENGINE_ENV})")
        return choice

    def _accelerated(self) -> bool:
        """Whether PyTorch should compute on a GPU; decided without importing torch where possible."""
        if self.device.startswith("cuda"):
            return True
        return self.device == "auto" and _gpu_present()

    def _current_info(self, stored: BackboneInfo | None, progress: Progress) -> BackboneInfo:
        if self._backbone is not None:
            return self._backbone.info
        if self._onnx is not None:
            return self._onnx.info
        return stored if stored is not None else self.info(progress)

    def _namespace(self, preprocessing: Preprocessing) -> str:
        return f"{self.ref.key[:12]}-{preprocessing.fingerprint()[:12]}"

    def _description(self, preprocessing: Preprocessing) -> dict:
        return {"backbone": self.ref.describe(), "preprocessing": preprocessing.to_dict(), "embedding": "pre_logits"}


def _gpu_present() -> bool:
    """An NVIDIA (or WSL GPU) device node exists: "auto" then leaves the choice to PyTorch's CUDA check."""
    return any(Path(node).exists() for node in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


@dataclass
class _Stores:
    """The cache stores one call uses, sharing one warn-once."""

    embeddings: EmbeddingStore  # the local SQLite cache, or the parquet store in $TLEARN_EMBEDDING_STORE
    rejects: RejectCache
    index: FileIndex
    probe: Callable[[str], bool] | None
    warn: Warn

    @classmethod
    def open(
        cls, extractor: FeatureExtractor, preprocessing: Preprocessing, info: BackboneInfo | None, warn: Warn
    ) -> _Stores:
        root = extractor.cache_root
        decoder_key = f"v{DECODER_VERSION}-max{extractor.max_pixels}"
        embeddings = open_embedding_store(
            root,
            extractor._namespace(preprocessing),
            extractor._description(preprocessing),
            dim=info.num_features if info is not None else None,
            warn=warn,
        )
        rejects = RejectCache(root, decoder_key, warn=warn)
        probe = embeddings.known_contents(str(rejects.path), decoder_key)
        return cls(embeddings, rejects, FileIndex(root, warn=warn), probe, warn)

    def close(self) -> None:
        self.embeddings.close()
        self.rejects.close()
        self.index.close()


class _Run:
    """One `embed_files` call's state: hashes and outcomes per file, the matrix filled as results arrive.

    Only one row per distinct content is written while embeddings arrive (`row_of`); copies of a content are
    filled at the end, so memory is the (N, D) matrix and nothing else of size N x D.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = paths
        self.hashes: list[str | None] = [None] * len(paths)
        self.failures: dict[int, str] = {}
        self.row_of: dict[str, int] = {}  # content hash → the matrix row holding its embedding
        self.reason_of: dict[str, str] = {}  # content hash → why it cannot be decoded (lasting)
        self.cache_hits = 0
        self.computed = 0
        self.files_read = 0
        self.engine = ""
        self.onnx_exported = False
        self.compute_started = False
        self._matrix: np.ndarray | None = None

    def first_positions(self, content_hashes: set[str]) -> dict[str, int]:
        """The first file position holding each of these contents."""
        first: dict[str, int] = {}
        for position, content_hash in enumerate(self.hashes):
            if content_hash in content_hashes and content_hash not in first:
                first[content_hash] = position
        return first

    def unsettled(self, positions: Sequence[int]) -> list[int]:
        """The positions with neither a failure, nor an embedding or verdict for their content."""
        return [
            p
            for p in positions
            if p not in self.failures and self.hashes[p] not in self.row_of and self.hashes[p] not in self.reason_of
        ]

    def store_row(self, position: int, content_hash: str, vector: np.ndarray) -> None:
        """Put one content's embedding into the row of `position` (its first file)."""
        self._rows(len(vector))[position] = vector
        self.row_of[content_hash] = position

    def store_computed(self, positions: list[int], vectors: np.ndarray, cache: EmbeddingStore) -> None:
        """Rows for freshly computed embeddings, each new content cached once."""
        for position, vector in zip(positions, vectors, strict=True):
            content_hash = self.hashes[position]
            if content_hash in self.row_of:
                continue
            self._rows(len(vector))[position] = vector
            self.row_of[content_hash] = position
            cache.put(content_hash, vector)

    def finish(self, dim: int) -> np.ndarray:
        """The (N, D) matrix: copies of each content filled, failures zero, every file accounted for."""
        matrix = self._rows(dim)
        for position, content_hash in enumerate(self.hashes):
            if position in self.failures or content_hash is None:
                continue
            if content_hash in self.reason_of:
                self.failures[position] = self.reason_of[content_hash]
            elif content_hash in self.row_of:
                row = self.row_of[content_hash]
                if row != position:
                    matrix[position] = matrix[row]
            else:
                self.failures[position] = "could not be decoded"
        for position in self.failures:
            matrix[position] = 0.0
        return matrix

    def _rows(self, dim: int) -> np.ndarray:
        if self._matrix is None:
            self._matrix = np.zeros((len(self.paths), dim), dtype=np.float32)
        return self._matrix
