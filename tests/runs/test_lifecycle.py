"""Run folders never lose a user's file: overlap with the data is refused, --overwrite replaces only tlearn's own
outputs and only once the new run has succeeded, and an unfinished run's model is never used."""

from __future__ import annotations

import json

import pytest

import tlearn
from helpers import make_class_folder, run_cli
from tlearn.errors import ModelFileError, RunDirError
from tlearn.runs.lifecycle import MARKER_FILE, OutputFolder, read_marker


def snapshot(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_out_equal_to_inside_or_containing_data_is_refused_and_nothing_is_touched(tiny_data, tmp_path):
    before = snapshot(tmp_path)
    for out, word in ((tiny_data, "is the data folder"), (tiny_data / "runs", "inside"), (tmp_path, "contains")):
        with pytest.raises(RunDirError, match=word):
            tlearn.train(tiny_data, out=out, overwrite=True, quiet=True)
        with pytest.raises(RunDirError, match=word):
            tlearn.evaluate(tiny_data / "..", tiny_data, out=out)  # refused before the model is even needed
    assert snapshot(tmp_path) == before


def test_class_folders_named_like_outputs_survive_overwrite(tmp_path, capsys):
    # The reported accident: `tlearn train DATA --out DATA --overwrite` deleted class folders tb/ and figures/.
    data = make_class_folder(tmp_path / "data", {"tb": 8, "figures": 8})
    before = snapshot(data)
    code, _, err = run_cli(capsys, "train", data, "--out", data, "--overwrite", "--quiet")
    assert code == 2 and "is the data folder" in err and "Traceback" not in err
    other = make_class_folder(tmp_path / "other", {"tb": 8, "figures": 8})
    code, _, err = run_cli(capsys, "train", data, "--out", other, "--overwrite", "--quiet")
    assert code == 2 and "tlearn did not write" in err
    assert snapshot(data) == before and len(snapshot(other)) == 16


def test_overwrite_restores_the_previous_run_when_the_new_one_fails(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tlearn.train(tiny_data, out=out, quiet=True)
    (out / "notes.txt").write_text("mine")
    previous = snapshot(out)

    def broken_report(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("tlearn.pipeline.write_report", broken_report)
    with pytest.raises(RuntimeError, match="disk full"):
        tlearn.train(tiny_data, out=out, quiet=True, overwrite=True, seed=5)
    assert snapshot(out) == previous  # the old run is back, byte for byte, and the notes untouched
    assert read_marker(out)["complete"] is True
    tlearn.load(out)  # still a usable, complete run


def test_a_failed_overwrite_rolls_back_only_its_own_outputs(tiny_data, tmp_path, monkeypatch):
    """Files tlearn did not write, whenever they appeared (before the run, during it), survive its rollback."""
    out = tmp_path / "run"
    tlearn.train(tiny_data, out=out, quiet=True)
    (out / "samples").mkdir()
    (out / "samples" / "keep.txt").write_text("before")
    previous = snapshot(out)

    def write_then_fail(*args, **kwargs):
        (out / "written-meanwhile.txt").write_text("during")  # e.g. a user's note saved while the run works
        raise RuntimeError("disk full")

    monkeypatch.setattr("tlearn.pipeline.write_report", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        tlearn.train(tiny_data, out=out, quiet=True, overwrite=True, seed=5)
    assert (out / "written-meanwhile.txt").read_text() == "during"
    (out / "written-meanwhile.txt").unlink()
    assert snapshot(out) == previous


def test_overwrite_replaces_only_after_success_and_keeps_other_files(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = tlearn.train(tiny_data, out=out, quiet=True, seed=1, split=(0.6, 0.2, 0.2))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="overwrite=True"):
        tlearn.train(tiny_data, out=out, quiet=True)
    second = tlearn.train(tiny_data, out=out, quiet=True, overwrite=True, split=(0.5, 0.5, 0.0))
    assert (out / "notes.txt").read_text() == "mine"
    assert set(second.metrics) == {"val", "cv"} != set(first.metrics)
    assert not (out / ".tlearn-previous").exists()
    assert read_marker(out)["complete"] is True and "model" in read_marker(out)["outputs"]


def test_an_unfinished_run_is_never_used_and_says_how_to_go_on(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    tlearn.train(tiny_data, out=out, quiet=True)
    marker = json.loads((out / MARKER_FILE).read_text())
    (out / MARKER_FILE).write_text(json.dumps({**marker, "complete": False}))  # as a crash before the end leaves it
    with pytest.raises(ModelFileError, match="did not complete"):
        tlearn.load(out)
    with pytest.raises(ModelFileError, match="did not complete"):
        tlearn.load(out / "model")
    code, _, err = run_cli(capsys, "export", out, "--out", tmp_path / "model.onnx")
    assert code == 2 and "did not complete" in err and not (tmp_path / "model.onnx").exists()
    with pytest.raises(RunDirError, match="resume=True"):
        tlearn.train(tiny_data, out=out, quiet=True)


def test_evaluate_never_writes_into_a_training_run(tiny_data, tmp_path):
    out = tmp_path / "run"
    tlearn.train(tiny_data, out=out, quiet=True)
    before = snapshot(out)
    with pytest.raises(RunDirError, match="holds a training run"):
        tlearn.evaluate(out, tiny_data, out=out, quiet=True)
    assert snapshot(out) == before
    evaluation_dir = tmp_path / "eval"
    tlearn.evaluate(out, tiny_data, out=evaluation_dir, quiet=True)
    first = snapshot(evaluation_dir)
    with pytest.raises(RunDirError, match=r"already holds a previous run; pass overwrite=True to replace it or"):
        tlearn.evaluate(out, tiny_data, out=evaluation_dir, quiet=True)  # never replaced silently, as runs
    assert snapshot(evaluation_dir) == first
    tlearn.evaluate(out, tiny_data, out=evaluation_dir, quiet=True, overwrite=True)
    assert read_marker(evaluation_dir)["kind"] == "evaluate" and read_marker(evaluation_dir)["complete"]


def test_a_folder_of_someone_elses_files_is_refused(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not ours")
    with (
        pytest.raises(RunDirError, match="tlearn did not write"),
        OutputFolder.open(folder, kind="train", overwrite=True),
    ):
        pass
    assert (folder / "holiday.jpg").read_bytes() == b"not ours" and not (folder / MARKER_FILE).exists()


def test_refusals_name_options_in_the_words_of_the_interface_used(tiny_data, tmp_path, capsys):
    """The same refusal says `overwrite=True` to a Python caller and `--overwrite` on the command line."""
    out = tmp_path / "run"
    tlearn.train(tiny_data, out=out, quiet=True)
    with pytest.raises(RunDirError) as raised:
        tlearn.train(tiny_data, out=out, quiet=True)
    assert str(raised.value).endswith("pass overwrite=True to replace it or choose another out=...")
    code, _, err = run_cli(capsys, "train", tiny_data, "--out", out, "-q")
    assert code == 2 and err.strip().endswith("pass --overwrite to replace it or choose another --out")
