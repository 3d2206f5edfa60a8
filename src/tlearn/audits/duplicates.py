"""Near-duplicate images: pairs whose embeddings point the same way, grouped.

Byte-identical files are already caught by the data check (same SHA-256); this also finds copies that differ
in bytes: re-encoded, resized, lightly cropped, mirrored or recoloured versions of one photo, burst shots.
Their backbone embeddings stay almost parallel once each feature is standardised over the data set (without
it, every embedding of a ReLU network shares a large common component and unrelated images of one class
already reach a cosine of 0.8).

A group matters when it crosses splits (a near-copy of a training image in val/test inflates the score: the
leakage the byte check cannot see) or carries different labels (at least one label is wrong, or the class
boundary is ill-defined).
"""

from __future__ import annotations

import numpy as np

from tlearn.audits.neighbours import NeighbourSearch, neighbour_search

# Cosine similarity of standardised embeddings above which two images count as near-duplicates. Measured with
# Lite0: the most similar pair of distinct images reaches 0.58 on hymenoptera/train and 0.71 on signs/train (one
# hand on a plain background, the most uniform set here). Copies of 40 hymenoptera photos score, as medians,
# 0.97 with 20% more brightness, 0.90 mirrored, 0.87 with a 10% crop, 0.84 re-encoded at JPEG quality 40 and
# 0.76 at half resolution: at 0.80 most copies are found except the smaller ones. On signs' 100-pixel images a
# re-encode changes the embedding as much as another photo does, so such copies are not found there.
DUPLICATE_SIMILARITY = 0.80


def group_pairs(pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected groups of the pairs (union-find), each sorted, larger groups first.

    Example:
        >>> group_pairs([(0, 1, 0.99), (1, 2, 0.95), (5, 7, 0.97)])
        [[0, 1, 2], [5, 7]]
    """
    parent: dict[int, int] = {}

    def root(item: int) -> int:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]  # path halving
            item = parent[item]
        return item

    for first, second, _ in pairs:
        parent[root(first)] = root(second)
    groups: dict[int, list[int]] = {}
    for item in parent:
        groups.setdefault(root(item), []).append(item)
    return sorted((sorted(members) for members in groups.values()), key=lambda members: (-len(members), members))


def near_duplicate_groups(
    embeddings: np.ndarray, *, threshold: float = DUPLICATE_SIMILARITY, search: NeighbourSearch | None = None
) -> list[tuple[list[int], float]]:
    """Groups of near-duplicate images (positions) with the highest similarity inside each group; `search` over
    these embeddings (default: `tlearn.audits.neighbours.neighbour_search`) finds the pairs.

    Example:
        >>> groups = near_duplicate_groups(embeddings)  # doctest: +SKIP
        >>> groups[0]  # doctest: +SKIP
        ([12, 40], 0.998)
    """
    pairs = (search or neighbour_search(embeddings)).pairs(threshold)
    groups = group_pairs(pairs)
    group_of = {member: index for index, members in enumerate(groups) for member in members}
    highest = [0.0] * len(groups)
    for first, _, similarity in pairs:
        highest[group_of[first]] = max(highest[group_of[first]], similarity)
    return list(zip(groups, highest, strict=True))
