"""One embedding matrix shared by the splits: each split's rows a slice of it, consecutive splits joined without a
copy.

At 100,000 images the (N, 1,280) float32 matrix of a run is 512 MB. Taking each split's rows by fancy indexing
copied it once more, and joining train + val for the head (and every split for the shipped model's fit) a third
and a fourth time: a cold 100k linear run peaked at 2.75 GB of RSS. Here the rows are put in split order in the
matrix itself (`split_views`), so the splits are consecutive slices of it, and `joined` hands out a run of
consecutive splits as one slice. The matrix is made read-only: the splits share its memory, so a write through
one of them would silently change another's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np


def split_views(matrix: np.ndarray, positions: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Each split's rows of `matrix` (positions in `positions`' order) as consecutive read-only slices of it.

    `matrix` is rearranged in place: its first rows become the first split's, then the next split's, and so on;
    the rows of no split (unusable files, excluded copies) end up after them. A position may be in one split only.
    """
    order = [position for rows in positions.values() for position in rows]
    listed = set(order)
    if len(listed) != len(order):
        raise ValueError("a row is in more than one split")
    order += [row for row in range(len(matrix)) if row not in listed]
    _permute_rows(matrix, order)
    matrix.flags.writeable = False
    views, start = {}, 0
    for split, rows in positions.items():
        views[split] = matrix[start : start + len(rows)]
        start += len(rows)
    return views


def joined(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The arrays one after the other: a slice of their matrix when they are consecutive slices of one (as
    `split_views` makes them), else a copy."""
    filled = [array for array in arrays if len(array)]
    if len(filled) == 1:
        return filled[0]
    if filled and _consecutive(filled):
        first = filled[0]
        # A view from the first array's start over all of them: they were checked to be one run of whole rows
        # of the same buffer, so it reads nothing else (and is read-only where they are).
        return np.lib.stride_tricks.as_strided(first, shape=(sum(map(len, filled)), *first.shape[1:]))
    return np.concatenate(arrays)


def _consecutive(arrays: Sequence[np.ndarray]) -> bool:
    """Whether the arrays are C-contiguous runs of rows of the same width and type in one buffer, each starting
    where the one before it ends."""
    first = arrays[0]
    if first.base is None:
        return False
    for array in arrays:
        if (
            array.base is not first.base
            or not array.flags.c_contiguous
            or array.shape[1:] != first.shape[1:]
            or array.dtype != first.dtype
        ):
            return False
    return all(_address(a) + a.nbytes == _address(b) for a, b in pairwise(arrays))


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def _permute_rows(matrix: np.ndarray, order: Sequence[int]) -> None:
    """matrix[i] = (the matrix before)[order[i]] for every i, in place with one row of scratch: each cycle of the
    permutation is followed once (a copy of the whole matrix is what this avoids)."""
    placed = np.zeros(len(order), dtype=bool)
    for start in range(len(order)):
        if placed[start] or order[start] == start:
            continue
        scratch = matrix[start].copy()
        row = start
        while order[row] != start:
            matrix[row] = matrix[order[row]]
            placed[row] = True
            row = order[row]
        matrix[row] = scratch
        placed[row] = True
