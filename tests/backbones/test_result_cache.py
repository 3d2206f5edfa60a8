"""The result cache: a result is computed once per distinct input and code, read back intact, and a damaged,
foreign or unusable store only ever costs a recomputation."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import numpy as np
import pytest

from tlearn.backbones import result_cache
from tlearn.backbones.result_cache import ResultCache, input_digest, remembered
from tlearn.evaluation.tasks import MULTI_LABEL
from tlearn.training.head import cached_fit_head, cached_select_c, fit_head, select_c


class Counted:
    """A computation that counts its calls."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_a_result_is_computed_once_and_read_back_equal_across_processes_sessions(tmp_path):
    value = {"accuracy": 0.9, "per_class": {"a": [1, 2]}, "nan": None, "order": {"z": 1, "a": 2}}
    compute = Counted(value)
    results = ResultCache(tmp_path)
    assert results.remember("metrics", compute, np.arange(3)) == value
    results.close()
    again = ResultCache(tmp_path)
    read = again.remember("metrics", compute, np.arange(3))
    assert (read, list(read["order"]), compute.calls, again.hits) == (value, ["z", "a"], 1, 1)
    png = Counted(b"\x89PNG\x00\xff")
    assert again.remember("figure", png, 1) == again.remember("figure", png, 1) == b"\x89PNG\x00\xff"
    assert png.calls == 1


@pytest.mark.parametrize(
    "changed",
    [
        (np.arange(3, dtype=np.float32),),  # same values, another dtype
        (np.arange(4),),  # another shape
        (np.array([0, 1, 3]),),  # another value
        (np.arange(3), 1),  # another setting
        (np.arange(3).reshape(3, 1),),
    ],
)
def test_any_change_of_the_inputs_is_another_result(tmp_path, changed):
    results = ResultCache(tmp_path)
    compute = Counted([1])
    results.remember("kind", compute, np.arange(3))
    results.remember("kind", compute, *changed)
    assert compute.calls == 2


def test_other_code_is_another_result(tmp_path, monkeypatch):
    results = ResultCache(tmp_path)
    compute = Counted([1])
    results.remember("kind", compute, 1)
    monkeypatch.setattr(result_cache, "code_digest", lambda: "edited")
    results.remember("kind", compute, 1)
    assert compute.calls == 2


def test_digests_tell_containers_and_numbers_apart():
    assert input_digest("k", [1, 2]) != input_digest("k", [[1, 2]])
    assert input_digest("k", 1) != input_digest("k", 1.0) != input_digest("k", "1")
    assert input_digest("k", {"a": 1, "b": 2}) == input_digest("k", {"b": 2, "a": 1})
    assert input_digest("a", 1) != input_digest("b", 1)
    with pytest.raises(TypeError, match="cannot digest"):
        input_digest("k", object())


@pytest.mark.parametrize("damage", ["crc32 = crc32 + 1", "fields = 'not json'", "arrays = x'00'"])
def test_a_damaged_row_is_recomputed_and_replaced(tmp_path, damage):
    results = ResultCache(tmp_path)
    compute = Counted({"a": 1})
    results.remember("kind", compute, 1)
    results.close()
    with closing(sqlite3.connect(tmp_path / "results.sqlite")) as connection, connection:
        connection.execute(f"UPDATE results SET {damage}")
    again = ResultCache(tmp_path)
    assert again.remember("kind", compute, 1) == {"a": 1} and compute.calls == 2
    again.close()
    assert ResultCache(tmp_path).remember("kind", compute, 1) == {"a": 1} and compute.calls == 2


def test_an_unusable_store_computes_and_never_fails(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    results = ResultCache(blocked, warn=lambda message: None)
    compute = Counted([1])
    assert results.remember("kind", compute, 1) == results.remember("kind", compute, 1) == [1]
    assert compute.calls == 2
    results.close()
    assert remembered(None, "kind", compute, 1) == [1] and compute.calls == 3


def test_only_the_most_recently_used_results_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(result_cache, "MAX_ROWS", 3)
    results = ResultCache(tmp_path)
    for value in range(5):
        results.remember("kind", Counted(value), value)
    results.close()
    with closing(sqlite3.connect(tmp_path / "results.sqlite")) as connection:
        assert connection.execute("SELECT count(*) FROM results").fetchone()[0] == 3
    with closing(ResultCache(tmp_path)) as results:
        assert results.remember("kind", Counted(None), 2) == 2  # read: now the most recently used
        results.remember("kind", Counted(5), 5)  # a sixth result: the least recently used (3) goes
    with closing(ResultCache(tmp_path)) as results:
        kept = {value for value in range(6) if results.remember("kind", Counted(None), value) is not None}
    assert kept == {2, 4, 5}


@pytest.mark.parametrize("multilabel", [False, True])
def test_cached_head_searches_and_fits_equal_computed_ones(tmp_path, multilabel):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    if multilabel:
        targets, options = (x[:, :3] > 0).astype(np.float64), {"task": MULTI_LABEL}
    else:
        targets, options = (x[:, 0] > 0).astype(int), {"balanced": True}
    classes = 3 if multilabel else 2
    expected_selection = select_c(x, targets, classes, folds=3, seed=1, **options)
    expected_head = fit_head(x, targets, classes, 0.1, seed=1, **options)
    for _ in range(2):  # computed and kept, then read back
        results = ResultCache(tmp_path)
        selection = cached_select_c(results, x, targets, classes, folds=3, seed=1, **options)
        head = cached_fit_head(results, x, targets, classes, 0.1, seed=1, **options)
        results.close()
        assert (selection.c, selection.folds, selection.candidates) == (
            expected_selection.c,
            expected_selection.folds,
            expected_selection.candidates,
        )
        np.testing.assert_array_equal(selection.out_of_fold, expected_selection.out_of_fold)
        np.testing.assert_array_equal(head.weight, expected_head.weight)
        np.testing.assert_array_equal(head.bias, expected_head.bias)
        assert head.task is expected_head.task
    other_seed = cached_select_c(ResultCache(tmp_path), x, targets, classes, folds=3, seed=2, **options)
    np.testing.assert_array_equal(
        other_seed.out_of_fold, select_c(x, targets, classes, folds=3, seed=2, **options).out_of_fold
    )


def test_digests_see_every_item_of_sequences_and_dataclasses():
    from dataclasses import dataclass

    @dataclass
    class Settings:
        folds: int
        c: float | None = None

    assert input_digest("k", [1, 2]) != input_digest("k", [1, 3])
    assert input_digest("k", Settings(5)) == input_digest("k", Settings(5))
    assert input_digest("k", Settings(5)) != input_digest("k", Settings(5, 0.1))
    assert input_digest("k", Settings(5)) != input_digest("k", {"folds": 5, "c": None})


def test_kinds_are_kept_apart_and_remembered_reads_back(tmp_path):
    results = ResultCache(tmp_path)
    first, second = Counted({"a": 1}), Counted({"b": 2})
    assert remembered(results, "metrics", first, 1) == {"a": 1}
    assert remembered(results, "audit", second, 1) == {"b": 2}  # same inputs, another computation
    assert remembered(results, "metrics", first, 1) == {"a": 1} and (first.calls, second.calls) == (1, 1)


def test_values_with_nan_and_infinity_round_trip(tmp_path):
    results = ResultCache(tmp_path)
    value = {"loss": float("nan"), "bound": float("inf")}
    results.remember("kind", Counted(value), 1)
    results.close()
    read = ResultCache(tmp_path).remember("kind", Counted(None), 1)
    assert np.isnan(read["loss"]) and read["bound"] == float("inf")


def test_a_row_whose_fields_were_changed_to_other_valid_json_is_not_trusted(tmp_path):
    results = ResultCache(tmp_path)
    results.remember("kind", Counted({"value": 1}), 1)
    results.close()
    with closing(sqlite3.connect(tmp_path / "results.sqlite")) as connection, connection:
        connection.execute("""UPDATE results SET fields = '{"value": {"value": 2}}'""")
    assert ResultCache(tmp_path).remember("kind", Counted({"value": 1}), 1) == {"value": 1}
