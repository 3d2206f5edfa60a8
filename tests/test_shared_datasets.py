"""End to end on the shared datasets (used in place, never copied): hymenoptera subset, pools, the demo."""

from __future__ import annotations

import json

import tlearn
from helpers import HYMENOPTERA, POOLS, needs_shared
from tlearn.cli import main


def _subset(source, target, per_class: int):
    """Symlink the first `per_class` images of each class (no copies of third-party images)."""
    for class_dir in sorted(source.iterdir()):
        (target / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:per_class]:
            (target / class_dir.name / image.name).symlink_to(image)
    return target


@needs_shared
def test_hymenoptera_subset_end_to_end(tmp_path):
    train = _subset(HYMENOPTERA / "train", tmp_path / "train", 24)
    val = _subset(HYMENOPTERA / "val", tmp_path / "val", 20)
    run = tlearn.train(train, out=tmp_path / "run", quiet=True, follow_links=True, mode="linear")
    evaluation = tlearn.evaluate(run.model_path, val, out=tmp_path / "eval", quiet=True, follow_links=True)
    assert evaluation.split == "all" and evaluation.metrics["all"]["n"] == 40
    assert evaluation.metrics["all"]["accuracy"] >= 0.85
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == evaluation.metrics


@needs_shared
def test_pools_all_four_test_houses_right(tmp_path):
    run = tlearn.train(POOLS / "train", out=tmp_path / "run", quiet=True)
    evaluation = tlearn.evaluate(run.model_path, POOLS / "test", quiet=True)
    assert evaluation.metrics["all"]["n"] == 4 and evaluation.metrics["all"]["accuracy"] == 1.0


def test_demo_trains_offline_and_reports_paths(tmp_path, capsys):
    try:
        main(["demo", "--out", str(tmp_path / "demo"), "--quiet"])
    except SystemExit as stop:
        assert stop.code == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "demo" / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.85 and metrics["test"]["classes"] == ["circle", "square", "triangle"]
    assert f"model: {tmp_path / 'demo' / 'run' / 'model'}" in out
