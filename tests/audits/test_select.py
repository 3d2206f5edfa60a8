"""`tlearn select`: candidates ranked on train + val only, unavailable ones listed, the budget obeyed, and the
winner saved for `--backbone best`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tlearn
from helpers import TINY_BACKBONE, make_class_folder, run_cli, tiny_backbone_weights
from tlearn.audits.select import PROBE_REPEATS, best_backbone, parse_budget, probe_outcomes, selection_record
from tlearn.errors import BackboneError, DataError, TlearnError
from tlearn.runs.lifecycle import read_marker
from tlearn.training.head import select_c

SECOND = "test_resnet"  # another tiny timm network, with seeded random weights


def seeded_weights(folder: Path, arch: str) -> Path:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    path = folder / f"{arch}.safetensors"
    save_file(timm.create_model(arch, pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Pre-split data (train 10 + val 4 per class, and a test split the selection must never read)."""
    root = tmp_path_factory.mktemp("select")
    data = root / "data"
    make_class_folder(data / "train", {"red": 10, "blue": 10})
    make_class_folder(data / "val", {"red": 4, "blue": 4}, start=10)
    make_class_folder(data / "test", {"red": 5, "blue": 5}, start=20)
    weights = {TINY_BACKBONE: tiny_backbone_weights(root), SECOND: seeded_weights(root, SECOND)}
    return data, weights


@pytest.fixture(scope="module")
def selection(setup, tmp_path_factory):
    data, weights = setup
    out = tmp_path_factory.mktemp("selected") / "selection"
    backbones = [TINY_BACKBONE, "nosuchnet", SECOND, "resnet18"]
    return tlearn.select(data, backbones=backbones, weights=weights, out=out, quiet=True)


def test_available_candidates_are_ranked_by_probe_accuracy_with_every_figure(selection, setup):
    ranked = [row for row in selection.candidates if row["status"] == "ranked"]
    assert {row["name"] for row in ranked} == {TINY_BACKBONE, SECOND}
    assert [row["rank"] for row in ranked] == [1, 2]
    assert (ranked[0]["accuracy"], -ranked[0]["loss"]) >= (ranked[1]["accuracy"], -ranked[1]["loss"])
    assert selection.winner is ranked[0]
    for row in ranked:
        low, high = row["interval"]
        assert low <= row["accuracy"] <= high + 1e-9 and row["images"] == 28  # train + val, never the test split
        assert row["parameters"] > 100_000 and row["size_bytes"] == 4 * row["parameters"]
        assert row["images_per_second"] > 0 and row["embed_seconds"] >= 0 and row["probe_seconds"] >= 0
        assert 0 <= row["knn_accuracy"] <= 1 and row["logme"] == pytest.approx(row["logme"])  # finite
        assert row["weights"] == str(setup[1][row["name"]].resolve())
    assert ranked[1]["p_vs_best"] is not None and 0 <= ranked[1]["p_vs_best"] <= 1
    assert sorted(row["logme_rank"] for row in ranked) == [1, 2]


def test_probe_accuracy_averages_several_draws_of_the_folds(selection):
    """One draw of 5 folds moves a few hundred images' accuracy by 1-2 points: the ranking averages draws."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 40)
    embeddings = rng.normal(size=(120, 16)) + 0.6 * np.eye(3, 16)[labels]  # overlapping classes
    draws = [
        float((select_c(embeddings, labels, 3, seed=seed).out_of_fold.argmax(1) == labels).mean())
        for seed in range(PROBE_REPEATS)
    ]
    assert len(set(draws)) > 1  # the folds' draw matters on such data
    right_share, _ = probe_outcomes(embeddings, labels, 3)
    assert right_share.mean() == pytest.approx(np.mean(draws))
    assert set(np.round(right_share * PROBE_REPEATS, 6)) <= set(range(PROBE_REPEATS + 1))
    assert all(row["probe_repeats"] == PROBE_REPEATS for row in selection.candidates if row["status"] == "ranked")


def test_candidates_without_weights_are_listed_with_the_reason_not_fatal(selection):
    others = {row["name"]: row for row in selection.candidates if row["status"] != "ranked"}
    assert others["nosuchnet"]["status"] == "unavailable" and "unknown backbone" in others["nosuchnet"]["reason"]
    assert others["resnet18"]["status"] == "unavailable" and "--weights" in others["resnet18"]["reason"]
    table = selection.table()
    assert "| 1 |" in table and "unavailable" in table and table.count("\n") == len(selection.candidates) + 1


def test_the_ranking_is_written_and_saved_for_backbone_best(selection, setup):
    data, weights = setup
    payload = json.loads(selection.select_json.read_text(encoding="utf-8"))
    assert payload == selection.payload and read_marker(selection.path)["kind"] == "select"
    page = selection.page.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and selection.winner["name"] in page and "nosuchnet" in page
    choice = best_backbone(data)
    assert choice.name == selection.winner["name"] and choice.weights == weights[choice.name].resolve()
    assert choice.accuracy == selection.winner["accuracy"] and choice.source == selection_record(data)
    assert best_backbone(data, selection=selection.path).name == choice.name


def test_best_backbone_explains_a_missing_or_stale_selection(tmp_path, setup):
    fresh = make_class_folder(tmp_path / "fresh", {"red": 4, "blue": 4})
    with pytest.raises(DataError, match="tlearn select"):
        best_backbone(fresh)
    data, _ = setup
    record = json.loads(selection_record(data).read_text(encoding="utf-8"))
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**record, "classes": ["cats", "dogs"]}), encoding="utf-8")
    with pytest.raises(DataError, match="made for classes"):
        best_backbone(data, selection=stale)
    (tmp_path / "junk.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="not a selection"):
        best_backbone(data, selection=tmp_path / "junk.json")


def test_the_budget_stops_adding_candidates_but_the_first_always_runs(setup):
    data, weights = setup
    chosen = tlearn.select(data, backbones=[TINY_BACKBONE, SECOND], weights=weights, budget=0, quiet=True)
    statuses = [(row["name"], row["status"]) for row in chosen.candidates]
    assert statuses == [(TINY_BACKBONE, "ranked"), (SECOND, "skipped")]
    assert "budget" in chosen.candidates[1]["reason"] and chosen.path is None


def test_no_candidate_or_too_few_images_is_one_error(setup):
    data, _ = setup
    with pytest.raises(BackboneError, match="no candidate backbone could be evaluated: nosuchnet: unknown backbone"):
        tlearn.select(data, backbones="nosuchnet", quiet=True)
    scarce = make_class_folder(data.parent / "scarce" / "train", {"red": 4, "blue": 1}).parent
    make_class_folder(scarce / "val", {"red": 2})
    with pytest.raises(DataError, match="'blue' has 1 train/val image"):
        tlearn.select(scarce, backbones=[TINY_BACKBONE], quiet=True)
    with pytest.raises(TlearnError, match="not among --backbones"):
        tlearn.select(data, backbones="lite0", weights={"resnet50": "x.safetensors"}, quiet=True)


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("90s", 90), ("1h30m", 5400), ("45", 45), (12.5, 12.5)])
def test_budgets_read_like_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m"])
def test_a_budget_that_is_not_a_duration_is_refused(text):
    with pytest.raises(TlearnError, match="expected a duration"):
        parse_budget(text)


def test_the_cli_prints_the_table_and_the_winner(setup, tmp_path, capsys):
    data, weights = setup
    argv = ["select", data, "--backbones", f"{TINY_BACKBONE},nosuchnet", "--out", tmp_path / "sel", "-q"]
    code, stdout, stderr = run_cli(capsys, *argv, "--weights", f"{TINY_BACKBONE}={weights[TINY_BACKBONE]}")
    assert code == 0, stderr
    assert f"best: {TINY_BACKBONE}" in stdout and "| 1 |" in stdout and "--weights NAME=PATH" in stderr
    assert (tmp_path / "sel" / "select.json").is_file()
    code, _, stderr = run_cli(capsys, "select", data, "--weights", "no-equals-sign")
    assert code == 2 and "NAME=PATH" in stderr
