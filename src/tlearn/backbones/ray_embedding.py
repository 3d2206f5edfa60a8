"""The embedding step of training on a Ray cluster (`tlearn train DATA --ray ADDRESS`): Ray Data actors read,
hash, decode and embed the images the cache lacks; the driver caches their answers like its own.

Each actor loads the backbone's checked ONNX graph once (one onnxruntime thread: Ray gives it one CPU) and does
what a decoding worker plus the local engine do for a batch of paths (`decoding.run_task` with content hashing,
then `OnnxBackbone.embed`), so a vector computed on the cluster is the one this machine computes and lands in
the same cache entry under the same content hash; rejected files carry the same reasons. The driver keeps
everything that needs the local cache (the file index, the verdicts, the embedding rows), so the rest of the
run is the local path's. As for `predict --ray`, the images must be readable at the same absolute paths on
every node.

The graph must exist (exported and checked on this machine by any earlier run of the backbone); until it does,
the images are embedded here and the run says so: exporting needs torch and a batch of this data, which the
first local batch provides.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.backbones.onnx_models import GraphFiles, OnnxBackbone
from tlearn.backbones.registry import BackboneInfo
from tlearn.data.decoding import DecodedBatch, DecodeTask, run_task
from tlearn.util.ray_cluster import connect, import_ray


@dataclass(frozen=True)
class RayEmbedded:
    """One batch's outcome, indexed like the paths it was given: `batch` as a decoding worker reports it
    (positions, failures, content hashes; no pixels) and the vectors of `batch.positions`, in that order."""

    batch: DecodedBatch
    vectors: np.ndarray  # (len(batch.positions), D) float32


class RayEmbeddingActor:
    """A Ray Data actor: the backbone's graph on one thread, embedding batches of paths."""

    def __init__(self, files: GraphFiles, info: BackboneInfo, task: DecodeTask) -> None:
        backbone = OnnxBackbone.load(files, info, threads=1)
        if backbone is None:  # the driver checked it; a node whose copy differs must not compute
            raise RuntimeError(f"the backbone's checked graph {files.model} is not readable on this node")
        self.backbone, self.task, self.dim = backbone, task, info.num_features

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(path) for path in batch["path"]]
        decoded = run_task(0, paths, self.task)
        vectors = np.zeros((len(paths), self.dim), dtype=np.float32)
        if decoded.positions:
            vectors[decoded.positions] = self.backbone.embed(decoded.pixels)
        embedded = np.zeros(len(paths), dtype=bool)
        embedded[decoded.positions] = True
        errors = dict(decoded.failures)
        return {
            "position": batch["position"],
            "vector": vectors,
            "embedded": embedded,
            "content_hash": np.array([decoded.content_hashes.get(i, "") for i in range(len(paths))], dtype=object),
            "error": np.array([errors.get(i, "") for i in range(len(paths))], dtype=object),
            "transient": np.array([i in decoded.transient for i in range(len(paths))], dtype=bool),
        }


def embed_on_ray(
    paths: Sequence[Path], files: GraphFiles, info: BackboneInfo, task: DecodeTask, *, address: str, batch_size: int
) -> Iterator[RayEmbedded]:
    """The outcomes of embedding `paths` on the cluster at `address`, batch by batch as they arrive (positions
    index into `paths`).

    Raises:
        TlearnError: Ray is not installed, or the cluster cannot be reached (one line each).
    """
    ray = import_ray()
    connect(ray, address)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = context.enable_auto_log_stats = False
    rows = [{"position": position, "path": str(Path(path).resolve())} for position, path in enumerate(paths)]
    dataset = ray.data.from_items(rows).map_batches(
        RayEmbeddingActor,
        fn_constructor_kwargs={"files": files, "info": info, "task": task},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(cpus, max(1, len(rows) // batch_size + 1))),
        num_cpus=1,
    )
    for columns in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield _outcome(columns)


def _outcome(columns: dict[str, Any]) -> RayEmbedded:
    """An actor's columns as the driver's `DecodedBatch` (positions into the whole path list) and vectors."""
    positions = [int(position) for position in columns["position"]]
    embedded = [row for row, done in enumerate(columns["embedded"]) if done]
    batch = DecodedBatch(
        positions=[positions[row] for row in embedded],
        pixels=np.empty((0, 0, 0, 3), dtype=np.uint8),
        failures=[(positions[row], str(error)) for row, error in enumerate(columns["error"]) if error],
        transient={positions[row] for row, transient in enumerate(columns["transient"]) if transient},
        content_hashes={positions[row]: str(h) for row, h in enumerate(columns["content_hash"]) if h},
    )
    return RayEmbedded(batch, np.asarray(columns["vector"], dtype=np.float32)[embedded])
