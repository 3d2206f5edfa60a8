"""The splits share one embedding matrix: each split's rows are the right rows, consecutive splits join without a
copy, and nothing can write through one split into another."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlearn.training.split_rows import joined, split_views


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_split_holds_exactly_its_rows_in_order(data):
    sizes = data.draw(st.lists(st.integers(0, 12), min_size=4, max_size=4))  # train, val, test, in no split
    shuffled = data.draw(st.permutations(range(sum(sizes))))
    ends = np.cumsum(sizes)
    positions = {"train": shuffled[: ends[0]], "val": shuffled[ends[0] : ends[1]], "test": shuffled[ends[1] : ends[2]]}
    rows = int(ends[3])
    original = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    matrix = original.copy()
    views = split_views(matrix, positions)
    for split, rows_of_split in positions.items():
        np.testing.assert_array_equal(views[split], original[rows_of_split].reshape(-1, 3))
        assert views[split].base is matrix or len(views[split]) == 0 or np.shares_memory(views[split], matrix)
    np.testing.assert_array_equal(
        joined([views["train"], views["val"]]), original[positions["train"] + positions["val"]].reshape(-1, 3)
    )
    np.testing.assert_array_equal(
        joined(list(views.values())), original[[p for rows_of in positions.values() for p in rows_of]].reshape(-1, 3)
    )


def test_consecutive_splits_join_without_a_copy_and_others_are_copied():
    matrix = np.arange(40, dtype=np.float32).reshape(10, 4)
    views = split_views(matrix, {"train": [9, 0, 4, 2], "val": [1, 7], "test": [3, 5, 6]})
    train_val = joined([views["train"], views["val"]])
    assert np.shares_memory(train_val, matrix) and train_val.shape == (6, 4)
    everything = joined([views["train"], views["val"], views["test"]])
    assert np.shares_memory(everything, matrix) and len(everything) == 9
    np.testing.assert_array_equal(everything[:, 0], [36, 0, 16, 8, 4, 28, 12, 20, 24])
    # Out of order, or skipping a split: a copy, the rows as asked.
    train_test = joined([views["train"], views["test"]])
    assert not np.shares_memory(train_test, matrix)
    np.testing.assert_array_equal(train_test[:, 0], [36, 0, 16, 8, 12, 20, 24])
    val_train = joined([views["val"], views["train"]])
    np.testing.assert_array_equal(val_train[:, 0], [4, 28, 36, 0, 16, 8])
    # One split (or one with rows among empty ones) is that split's own slice.
    assert joined([views["val"]]) is views["val"]
    assert joined([views["test"], matrix[:0]]) is views["test"]


def test_arrays_that_are_not_one_run_of_whole_rows_are_copied():
    wide = np.arange(48, dtype=np.float32).reshape(6, 8)
    halves = joined([wide[:3, :4], wide[3:, :4]])  # column slices: not whole rows
    np.testing.assert_array_equal(halves, wide[:, :4])
    gap = joined([wide[:2], wide[3:]])  # a row left out between them
    np.testing.assert_array_equal(gap, wide[[0, 1, 3, 4, 5]])
    other = joined([wide[:2], np.arange(16, dtype=np.float32).reshape(2, 8)])  # two matrices
    np.testing.assert_array_equal(other[2:], np.arange(16).reshape(2, 8))
    assert joined([wide[:2], wide[2:4].astype(np.float64)]).dtype == np.float64
    # Adjacent in memory, yet not one run of whole rows of one array: every one a copy, the values as asked.
    strided = [wide[0:1, ::2], wide[0:1, 4:]]  # the first's columns are every other value
    np.testing.assert_array_equal(joined(strided), np.concatenate(strided))
    retyped = [wide[:2], wide[2:4].view(np.int32)]
    np.testing.assert_array_equal(joined(retyped), np.concatenate(retyped))
    buffer = bytearray(64)  # two arrays over one buffer, each its own owner: the joined one must not outlive them
    owners = [np.frombuffer(buffer, np.float32, count=8, offset=offset).reshape(2, 4) for offset in (0, 32)]
    assert not np.shares_memory(joined(owners), owners[0])


def test_no_split_can_be_written_through_and_a_row_in_two_splits_is_refused():
    matrix = np.zeros((4, 2), dtype=np.float32)
    views = split_views(matrix, {"train": [0, 1], "val": [2]})
    with pytest.raises(ValueError):
        views["train"][0, 0] = 1.0
    with pytest.raises(ValueError, match="more than one split"):
        split_views(np.zeros((4, 2), dtype=np.float32), {"train": [0, 1], "val": [1]})


def test_a_run_learns_from_one_matrix_with_its_splits_joined_without_copies(tmp_path, monkeypatch):
    """Through a real run: the linear head's train + val rows (and the final fit's train + val + test rows) are
    a view of one matrix, not copies of it, and they are the rows of those splits."""
    import tlearn
    from helpers import TINY_BACKBONE, make_class_folder, tiny_backbone_weights
    from tlearn.training import candidates

    seen = {}
    original = candidates.linear_candidate

    def spy(config, prepared):
        seen["prepared"] = prepared
        return original(config, prepared)

    monkeypatch.setattr("tlearn.pipeline.linear_candidate", spy)
    data = make_class_folder(tmp_path / "data", {"red": 10, "blue": 10}, size=32)
    weights = tiny_backbone_weights(tmp_path)
    tlearn.train(data, out=tmp_path / "run", backbone=TINY_BACKBONE, weights=weights, quiet=True, mode="linear")
    prepared = seen["prepared"]
    features = prepared.features
    assert all(len(features[split]) for split in ("train", "val", "test"))
    for splits in (("train", "val"), ("train", "val", "test")):
        rows = prepared.stack(*splits)[0]
        assert all(np.shares_memory(rows, features[split]) for split in splits)
        np.testing.assert_array_equal(rows, np.concatenate([features[split] for split in splits]))
