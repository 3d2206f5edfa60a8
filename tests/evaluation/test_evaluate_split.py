"""`tlearn evaluate --split test` on the folder a model learnt from measures the test split its run measured."""

from __future__ import annotations

import json

import pytest

import tlearn
from helpers import TINY_BACKBONE, make_class_folder, tiny_backbone_weights


@pytest.mark.parametrize(
    ("split", "label_file"), [((0.5, 0.25, 0.25), False), (None, False), ((0.5, 0.25, 0.25), True)]
)
def test_the_test_split_of_a_class_folder_is_the_one_the_run_drew(tmp_path, split, label_file):
    data = make_class_folder(tmp_path / "data", {"red": 24, "blue": 24})
    if label_file:  # the same images listed in a label file without a split column
        rows = [f"{path.relative_to(data).as_posix()},{path.parent.name}" for path in sorted(data.rglob("*.png"))]
        (data / "labels.csv").write_text("\n".join(["path,label", *rows]) + "\n")
        data = data / "labels.csv"
    settings = {"split": split} if split else {}
    run = tlearn.train(
        data,
        out=tmp_path / "run",
        weights=tiny_backbone_weights(tmp_path),
        backbone=TINY_BACKBONE,
        mode="linear",
        final_fit="train",
        quiet=True,
        **settings,
    )
    drawn = json.loads((run.path / "splits.json").read_text())["test"]
    config = json.loads((run.model_path / "config.json").read_text())
    assert config["split_fractions"] == list(split or (0.64, 0.16, 0.2))
    evaluation = tlearn.evaluate(run.path, data, split="test", quiet=True)
    assert sorted(row["path"] for row in evaluation.predictions) == sorted(drawn)
    assert evaluation.metrics["test"]["n"] == len(drawn) == run.metrics["test"]["n"]
    if split and not label_file:  # an exported model carries the fractions too
        exported = tlearn.export(run.path, tmp_path / "model.onnx")
        on_onnx = tlearn.evaluate(exported.path, data, split="test", quiet=True)
        assert sorted(row["path"] for row in on_onnx.predictions) == sorted(drawn)
