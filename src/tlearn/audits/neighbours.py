"""The audit's similarity searches over a data set's embeddings: every pair of images above a similarity
(near-duplicates) and each image's nearest neighbours (outliers), exact or through an index.

Exact search multiplies blocks of the (N, D) unit embeddings by all of them: N² x D operations: 9.8 s for the
pairs and 11.8 s for the neighbours of 20,000 1,280-d embeddings on this 2-core machine, growing with the
square. Beyond `EXACT_LIMIT` images an inverted-file index (faiss's `IndexIVFFlat`, `pip install
"tlearn[scale]"`) compares each image only with the images of its `NPROBE` nearest of 4√N clusters.
Near-duplicates lie far closer together than distinct images, so they share a cluster or sit in neighbouring
ones. Measured on synthetic clustered embeddings with 1,000 planted copies (cosine 0.87-0.98;
benchmarks/bench_neighbours.py): at 20,000 the index found the same pairs and neighbours as the exact search in
1.9 s + 0.8 s; at 100,000 every planted pair in 14.5 s (5.6 s of it building the index) and the neighbours in
8.6 s more. Without faiss, the exact search runs whatever the size.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from tlearn.audits.vectors import BLOCK_ROWS, standardised_unit

EXACT_LIMIT = 10_000  # images up to which the search is exact (about 2.5 s for pairs, 3 s for neighbours)
CLUSTERS_PER_ROOT = 4  # the index's clusters: 4 x sqrt(N)
NPROBE = 8  # clusters searched per image
TRAINING_ROWS_PER_CLUSTER = 40  # rows k-means learns the clusters from (faiss asks for at least 39 per cluster)


def similar_pairs(unit: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) of unit rows with cosine similarity ≥ `threshold`, most similar first.

    Computed block by block, so a data set of 100,000 images never holds the N x N matrix.
    """
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(unit), BLOCK_ROWS):
        block = unit[start : start + BLOCK_ROWS] @ unit.T  # (block, N)
        rows, columns = np.nonzero(block >= threshold)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            if column > start + row:  # upper triangle only: each pair once, never an image with itself
                pairs.append((start + row, column, float(block[row, column])))
    return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))


def knn_distances(unit: np.ndarray, neighbours: int) -> np.ndarray:
    """Mean cosine distance of each unit row to its `neighbours` nearest other rows, (N,)."""
    count = min(neighbours, len(unit) - 1)
    if count < 1:
        return np.zeros(len(unit))
    distances = np.empty(len(unit))
    for start in range(0, len(unit), BLOCK_ROWS):
        similarity = unit[start : start + BLOCK_ROWS] @ unit.T  # (block, N)
        rows = np.arange(len(similarity))
        similarity[rows, start + rows] = -np.inf  # never one's own neighbour
        nearest = -np.partition(-similarity, count - 1, axis=1)[:, :count]  # the `count` largest, any order
        distances[start : start + len(similarity)] = 1.0 - nearest.mean(axis=1)
    return distances


class NeighbourSearch(Protocol):
    """What the audit asks of a search over standardised unit embeddings."""

    method: str  # how pairs and neighbours are found, for audit.json

    def pairs(self, threshold: float) -> list[tuple[int, int, float]]:
        """Every pair (i < j) with cosine similarity ≥ `threshold`, most similar first."""
        ...

    def mean_neighbour_distances(self, neighbours: int) -> np.ndarray:
        """(N,) mean cosine distance of each image to its `neighbours` nearest other images."""
        ...


class ExactSearch:
    """Blocked matrix products over every pair: exact, N² x D."""

    method = "exact"

    def __init__(self, unit: np.ndarray) -> None:
        self.unit = unit

    def pairs(self, threshold: float) -> list[tuple[int, int, float]]:
        return similar_pairs(self.unit, threshold)

    def mean_neighbour_distances(self, neighbours: int) -> np.ndarray:
        return knn_distances(self.unit, neighbours)


class IndexedSearch:
    """faiss's inverted-file index over the unit embeddings (inner product = cosine similarity)."""

    def __init__(self, unit: np.ndarray, *, seed: int = 0) -> None:
        import faiss  # optional: tlearn[scale]

        self.unit = np.ascontiguousarray(unit, dtype=np.float32)
        count, dim = self.unit.shape
        clusters = max(1, min(count // TRAINING_ROWS_PER_CLUSTER, round(CLUSTERS_PER_ROOT * math.sqrt(count))))
        sample = np.random.default_rng(seed).permutation(count)[: clusters * TRAINING_ROWS_PER_CLUSTER]
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, clusters, faiss.METRIC_INNER_PRODUCT)
        self.index.train(self.unit[np.sort(sample)])
        self.index.add(self.unit)
        self.index.nprobe = min(NPROBE, clusters)
        self.method = f"faiss IVF ({clusters} clusters, {self.index.nprobe} searched per image)"

    def pairs(self, threshold: float) -> list[tuple[int, int, float]]:
        limits, similarities, columns = self.index.range_search(self.unit, float(threshold))
        rows = np.repeat(np.arange(len(self.unit)), np.diff(limits.astype(np.int64)))
        upper = columns > rows  # each pair once, never an image with itself
        found = zip(rows[upper].tolist(), columns[upper].tolist(), similarities[upper].tolist(), strict=True)
        return sorted(((i, j, float(s)) for i, j, s in found), key=lambda pair: (-pair[2], pair[0], pair[1]))

    def mean_neighbour_distances(self, neighbours: int) -> np.ndarray:
        count = min(neighbours, len(self.unit) - 1)
        if count < 1:
            return np.zeros(len(self.unit))
        similarities, columns = self.index.search(self.unit, count + 1)
        itself = columns == np.arange(len(self.unit))[:, None]
        # Drop the image itself; where the index did not return it, drop the farthest instead.
        itself[~itself.any(axis=1), -1] = True
        others = np.where(columns >= 0, similarities, np.nan)[~itself].reshape(len(self.unit), count)
        return 1.0 - np.nanmean(others, axis=1)


def neighbour_search(embeddings: np.ndarray) -> NeighbourSearch:
    """The search for these (N, D) embeddings: exact up to `EXACT_LIMIT` images or without faiss, else indexed."""
    unit = standardised_unit(embeddings)
    if len(unit) <= EXACT_LIMIT:
        return ExactSearch(unit)
    try:
        return IndexedSearch(unit)
    except ImportError:
        return ExactSearch(unit)
