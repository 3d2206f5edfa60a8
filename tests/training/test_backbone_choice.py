"""`--backbone auto`: the candidates compared on train + val over several fold draws, a larger one chosen only by
a margin, small folders left to the cheapest, and the run recording every candidate."""

from __future__ import annotations

import numpy as np
import pytest

import tlearn
from helpers import TINY_BACKBONE, make_class_folder, tiny_backbone_weights
from tlearn.backbones.registry import resolve_backbone, resolve_backbones
from tlearn.errors import BackboneError
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL
from tlearn.training import backbone_choice
from tlearn.training.backbone_choice import DRAWS, MARGIN, CandidateFeatures, compare_backbones, comparison_rows


def _features(separation: float, seed: int, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    return rng.normal(size=(n, 6)) + separation * labels[:, None], labels


def test_the_backbone_whose_head_cross_validates_best_is_chosen():
    weak, labels = _features(0.4, 0)
    strong, _ = _features(3.0, 1)
    choice = compare_backbones(
        [CandidateFeatures("small", weak), CandidateFeatures("large", strong)], labels, 2, SINGLE_LABEL
    )
    assert choice.chosen == 1 and [trial.chosen for trial in choice.trials] == [False, True]
    assert all(len(trial.cv_accuracy_draws) == DRAWS for trial in choice.trials)
    assert choice.trials[1].cv_accuracy == pytest.approx(np.mean(choice.trials[1].cv_accuracy_draws), abs=1e-6)
    low, high = choice.trials[1].cv_accuracy_interval
    assert low < choice.trials[1].cv_accuracy <= high
    assert "large" in choice.reason and "small" in choice.reason


def test_a_larger_backbone_must_add_the_margin_to_replace_a_cheaper_one(monkeypatch):
    features, labels = _features(1.0, 0)
    same = [CandidateFeatures("cheap", features), CandidateFeatures("dear", features.copy())]
    assert compare_backbones(same, labels, 2, SINGLE_LABEL).chosen == 0  # a tie keeps the cheaper
    monkeypatch.setattr(backbone_choice, "MARGIN", -MARGIN)  # any backbone at most a margin worse would win
    assert compare_backbones(same, labels, 2, SINGLE_LABEL).chosen == 1


def test_label_sets_are_compared_by_their_whole_sets():
    rng = np.random.default_rng(0)
    targets = (rng.random((120, 2)) < 0.5).astype(np.float32)
    noise = rng.normal(size=(120, 6))
    telling = noise + 3.0 * np.c_[targets, targets, targets]
    choice = compare_backbones(
        [CandidateFeatures("noise", noise), CandidateFeatures("telling", telling)], targets, 2, MULTI_LABEL
    )
    assert choice.chosen == 1 and choice.trials[1].cv_accuracy > 0.8 > choice.trials[0].cv_accuracy


def test_small_folders_use_the_cheapest_and_large_ones_a_sample(monkeypatch):
    assert comparison_rows(np.zeros(backbone_choice.MIN_IMAGES - 1, int), SINGLE_LABEL, 0) is None
    enough = backbone_choice.MIN_IMAGES
    assert len(comparison_rows(np.zeros(enough, int), SINGLE_LABEL, 0)) == enough
    labels = np.repeat([0, 1, 2], 1000)
    rows = comparison_rows(labels, SINGLE_LABEL, 0)
    assert abs(len(rows) - backbone_choice.SAMPLE_LIMIT) <= 3 and set(np.bincount(labels[rows])) <= {333, 334}


def test_auto_means_every_embedded_backbone_cheapest_first():
    assert [ref.arch for ref in resolve_backbones("auto")] == [f"tf_efficientnet_lite{n}" for n in range(3)]
    assert [ref.arch for ref in resolve_backbones("lite1")] == ["tf_efficientnet_lite1"]
    with pytest.raises(BackboneError, match="weights file not found"):  # weights alone: the default backbone's
        resolve_backbones("auto", "weights.safetensors")


def test_a_run_records_every_candidate_and_learns_on_the_chosen_one(tmp_path, monkeypatch):
    """Two candidate networks (the same tiny architecture, different weights): the run compares both on its
    train + val images, records both, and its model is built on the one it chose."""
    import timm
    import torch
    from safetensors.torch import save_file

    first = tiny_backbone_weights(tmp_path)
    torch.manual_seed(7)
    second = tmp_path / "other.safetensors"
    save_file(timm.create_model(TINY_BACKBONE, pretrained=False).state_dict(), second)
    refs = [resolve_backbone(TINY_BACKBONE, first), resolve_backbone(TINY_BACKBONE, second)]
    refs = [refs[0], type(refs[1])(**{**refs[1].__dict__, "name": "other-weights"})]
    monkeypatch.setattr("tlearn.pipeline.resolve_backbones", lambda name, weights: refs)
    data = make_class_folder(tmp_path / "data", {"red": 70, "blue": 70}, size=32)
    run = tlearn.train(data, out=tmp_path / "run", quiet=True, mode="linear")
    trials = run.summary.backbone_trials
    assert [trial.name for trial in trials] == [TINY_BACKBONE, "other-weights"]
    assert sum(trial.chosen for trial in trials) == 1 and run.summary.backbone_choice
    chosen = next(trial for trial in trials if trial.chosen)
    assert run.summary.backbone["name"] == chosen.name == tlearn.load(run.path).config.backbone["name"]
    assert all(trial.images == run.summary.head.cross_validated_images for trial in trials)
