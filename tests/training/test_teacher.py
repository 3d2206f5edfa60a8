"""Learning from a teacher (`--teacher`, `--unlabelled`): the fine-tuned network learns the teacher's answers, the
run records how the teacher did, and a teacher that cannot teach this data is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import tlearn
from helpers import TINY_BACKBONE, colour_image, make_class_folder, run_cli, tiny_backbone_weights
from tlearn.errors import TlearnError
from tlearn.evaluation.tasks import MULTI_LABEL, SINGLE_LABEL

TINY = {"backbone": TINY_BACKBONE, "batch_size": 8, "workers": 0, "quiet": True}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tiny_backbone_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """Red squares against blue circles, pre-split, so every run trains and validates on the same images."""
    root = tmp_path_factory.mktemp("colours")
    make_class_folder(root / "train", {"red": 12, "blue": 12})
    make_class_folder(root / "val", {"red": 6, "blue": 6}, start=100)
    return root


@pytest.fixture(scope="module")
def linear_teacher(colours, weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    tlearn.train(colours, out=out, mode="linear", weights=weights, **TINY)
    return out


def _swapped(teacher: Path, out: Path) -> Path:
    """A copy of the teacher whose answers are the other class: its class names in reverse order."""
    shutil.copytree(teacher / "model", out)
    config = json.loads((out / "config.json").read_text())
    config["classes"] = config["classes"][::-1]
    (out / "config.json").write_text(json.dumps(config))
    return out


def _student(colours, weights, out: Path, **options):
    settings = {"mode": "finetune", "final_fit": "train", "epochs": 4, "lr": 0.02, "warmup_epochs": 0} | options
    return tlearn.train(colours, out=out, weights=weights, **TINY, **settings)


def test_the_fine_tuned_network_learns_the_teachers_answers(colours, weights, linear_teacher, tmp_path):
    # A teacher that answers every image with the other class, and all of the targets from it: the student
    # must learn the wrong answers (so the teacher really is what it learnt from), and be measured on the labels.
    wrong = _swapped(linear_teacher, tmp_path / "wrong")
    taught = _student(colours, weights, tmp_path / "taught", teacher=str(wrong), teacher_share=1.0)
    record = taught.summary.teacher
    assert record.model == str(wrong) and record.mode == "linear" and record.engine == "torch"
    assert record.share == 1.0 and record.taught_images == 24 and record.unlabelled_images == 0
    assert record.accuracy["val"] == 0.0  # the swapped teacher is wrong on every validation image
    last = taught.history_rows[-1]  # (the kept epoch is the best on the labels: the untrained start)
    assert last["val_accuracy"] <= 0.25 and last["train_accuracy"] >= 0.75  # it agrees with the teacher's answers
    # The same run learning from the labels alone answers right.
    labels = _student(colours, weights, tmp_path / "labels", teacher=str(wrong), teacher_share=0.0)
    assert labels.history_rows[-1]["val_accuracy"] >= 0.75 and labels.metrics["val"]["accuracy"] >= 0.75
    # run.json keeps the record, and the report shows the teacher beside the candidates.
    saved = json.loads((taught.path / "run.json").read_text())
    assert saved["teacher"]["accuracy"] == {"val": 0.0} and saved["teacher"]["share"] == 1.0
    page = (taught.path / "report.html").read_text()
    assert "teacher: " in page and "0% from the labels and 100% from the answers of the teacher" in page


def test_unlabelled_images_are_learnt_from_and_copies_of_labelled_images_skipped(
    colours, weights, linear_teacher, tmp_path, monkeypatch
):
    import tlearn.training.setup as setup

    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "more").mkdir(parents=True)
    for n in range(5):
        colour_image((220, 30, 30) if n % 2 else (30, 30, 220), seed=900 + n).save(unlabelled / "more" / f"{n}.png")
    shutil.copy(colours / "val" / "red" / "img_100.png", unlabelled / "copy-of-val.png")
    shutil.copy(colours / "train" / "blue" / "img_000.png", unlabelled / "copy-of-train.png")
    (unlabelled / "broken.jpg").write_bytes(b"not an image")
    trained_on: list[int] = []
    original = setup.train_images

    def counting(files, model_config, plan):
        trained_on.append(len(files.paths))
        assert files.labels.dtype == np.float32 and files.labels.shape == (len(files.paths), 2)
        return original(files, model_config, plan)

    monkeypatch.setattr(setup, "train_images", counting)
    run = _student(colours, weights, tmp_path / "run", teacher=str(linear_teacher), unlabelled=unlabelled, epochs=1)
    record = run.summary.teacher
    assert record.unlabelled_images == 5 and record.unlabelled_skipped == 3
    assert trained_on == [24 + 5]


def test_soft_targets_mix_labels_and_teacher_for_both_tasks():
    teacher = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert np.allclose(SINGLE_LABEL.taught_targets(np.array([0, 1]), teacher, 0.25), [[0.8, 0.2], [0.225, 0.775]])
    indicators = np.array([[1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    assert np.allclose(MULTI_LABEL.taught_targets(indicators, teacher, 0.5), [[0.6, 0.9], [0.45, 0.05]])
    # a training batch's right answers against soft targets: their top class (single-label), labels at 0.5
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    soft = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    assert (
        SINGLE_LABEL.torch_right(logits, soft) == 2 and SINGLE_LABEL.torch_right(logits, torch.tensor([0, 1, 1])) == 3
    )
    assert MULTI_LABEL.torch_right(torch.tensor([[2.0, -2.0]]), torch.tensor([[0.6, 0.4]])) == 1


def test_a_teacher_that_cannot_teach_this_data_is_refused(colours, weights, linear_teacher, tmp_path, capsys):
    other = make_class_folder(tmp_path / "other", {"red": 8, "green": 8})
    with pytest.raises(
        TlearnError,
        match=r"teacher's classes are not the data's \(only the data has green; only the teacher has blue\)$",
    ):
        _student(other, weights, tmp_path / "a", teacher=str(linear_teacher))
    with pytest.raises(TlearnError, match="--mode linear does not fine-tune"):
        tlearn.train(colours, out=tmp_path / "b", mode="linear", teacher=str(linear_teacher), **TINY)
    with pytest.raises(TlearnError, match="give --teacher too"):
        tlearn.train(colours, out=tmp_path / "c", unlabelled=tmp_path, **TINY)
    code, _, err = run_cli(capsys, "train", colours, "--out", tmp_path / "d", "--teacher", tmp_path / "nothing")
    assert code != 0 and "nothing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # refused before the run folder is made
