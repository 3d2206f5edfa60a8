"""Outliers: images far from every other image of the data set, in the backbone's embedding space.

An image's score is its mean cosine distance to its k nearest neighbours (standardised, unit-length
embeddings), whatever their class: a picture unlike anything else in the folder (a screenshot among photos, an
empty frame, an image of another domain) has no close neighbour in any class. An image is flagged when its
score is more than `OUTLIER_Z` robust standard deviations (1.4826 x the median absolute deviation) above the
median score: a rule that adapts to how varied the data set is and flags nothing in a homogeneous one.

Measured with Lite0 (benchmarks/bench_audit.py plants five foreign images in a set: one from each other
shared set, a grey frame and a noise image): four of the five are the 4 most isolated images of signs and of
mri, three of them in hymenoptera's top 4; the fence, crossed by no original image of the four shared sets,
flags 2 of 5 in signs, 4 of 5 in mri and none in hymenoptera or pools, whose own photos are as varied as
anything planted. Tukey's fence (Q3 + 3 IQR), a density ratio (LOF) and PCA reconstruction error did worse. The
nearest class centroid is reported alongside, so a reviewer sees what the image is closest to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlearn.audits.neighbours import NeighbourSearch, neighbour_search
from tlearn.audits.vectors import centred_unit

NEIGHBOURS = 10
OUTLIER_Z = 3.0
MAD_TO_SD = 1.4826  # the median absolute deviation of a normal distribution is 0.6745 standard deviations


@dataclass
class OutlierScores:
    """Per-image k-NN distances, the fence above which an image is an outlier, and each nearest class."""

    scores: np.ndarray  # (N,) mean cosine distance to the k nearest other images
    fence: float
    nearest_class: np.ndarray  # (N,) index of the closest class centroid
    neighbours: int

    @property
    def flagged(self) -> np.ndarray:
        """Positions above the fence, farthest first."""
        above = np.flatnonzero(self.scores > self.fence)
        return above[np.argsort(-self.scores[above], kind="stable")]


def robust_fence(scores: np.ndarray, z: float = OUTLIER_Z) -> float:
    """median + z x 1.4826 x MAD of the scores (infinite when they do not vary: nothing stands out).

    Example:
        >>> robust_fence(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
        7.4478
    """
    if len(scores) == 0:
        return float("inf")
    median = float(np.median(scores))
    spread = MAD_TO_SD * float(np.median(np.abs(scores - median)))
    return median + z * spread if spread > 0 else float("inf")


def outlier_scores(embeddings: np.ndarray, members: np.ndarray, search: NeighbourSearch | None = None) -> OutlierScores:
    """Score every image by its distance to its nearest neighbours (found by `search` over these embeddings,
    default `tlearn.audits.neighbours.neighbour_search`) and set the outlier fence; `members` (N, K) says which
    classes each image carries (`Task.target_matrix`): a class's centre is the mean of its images.

    Example:
        >>> found = outlier_scores(embeddings, SINGLE_LABEL.target_matrix(labels, 2))  # doctest: +SKIP
        >>> found.flagged[:3], found.fence  # doctest: +SKIP
    """
    scores = (search or neighbour_search(embeddings)).mean_neighbour_distances(NEIGHBOURS)
    unit = centred_unit(embeddings)
    centroids = members.T.astype(np.float64) @ unit / np.maximum(members.sum(axis=0), 1)[:, None]
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    nearest = (unit @ centroids.T).argmax(axis=1) if len(unit) else np.zeros(0, dtype=np.int64)
    return OutlierScores(scores, robust_fence(scores), nearest, min(NEIGHBOURS, max(len(unit) - 1, 0)))
