"""Run folders never lose a user's file: overlap with the data is refused, --overwrite replaces only tlearn's own
outputs and only once the new run has succeeded, and an unfinished run's model is never used."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

import tlearn
from helpers import make_class_folder, run_cli
from tlearn.errors import ModelFileError, RunDirError
from tlearn.runs.layout import EVALUATION_OUTPUTS
from tlearn.runs.lifecycle import (
    ASIDE_DIR,
    MARKER_FILE,
    OutputFolder,
    RunFolderWarning,
    is_incomplete_run,
    read_marker,
    refuse_overlap,
    settle_interrupted,
)


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


# The promises below are checked on the lifecycle alone (OutputFolder.open around a few small files, no model), so
# each takes milliseconds: what a run writes inside the block does not matter to the folder's rules.

OLD = {"metrics.json": b'{"old": true}', "model/config.json": b'{"old": true}', "figures/loss.png": b"old png"}


def write_outputs(root, files):
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def finished(root, kind="train", files=OLD, **options):
    """A complete folder of `kind` holding `files`, written through the lifecycle; its snapshot."""
    with OutputFolder.open(root, kind=kind, **options):
        write_outputs(root, files)
    return snapshot(root)


def unfinished(root, files=OLD):
    """A training run that got as far as a checkpoint and then failed: kept, unfinished, resumable."""
    with pytest.raises(RuntimeError, match="out of memory"), OutputFolder.open(root, kind="train"):
        write_outputs(root, {**files, "config.yaml": b"seed: 1\n", "checkpoints/refit/state.pt": b"state"})
        raise RuntimeError("out of memory")
    return snapshot(root)


def test_only_a_readable_tlearn_marker_of_a_known_kind_makes_a_folder_a_run(tmp_path):
    marker = tmp_path / MARKER_FILE
    assert read_marker(tmp_path) is None and not is_incomplete_run(tmp_path)  # no marker at all
    for not_ours in (
        b"{half",
        b"\xff\xfe not utf-8",
        b'["format", "tlearn-run"]',
        b'{"format": "other-tool", "kind": "train"}',
        b'{"format": "tlearn-run", "kind": "mystery"}',
    ):
        marker.write_bytes(not_ours)
        assert read_marker(tmp_path) is None and not is_incomplete_run(tmp_path), not_ours
    marker.write_text(json.dumps({"format": "tlearn-run", "kind": "evaluate"}))
    assert read_marker(tmp_path) == {"format": "tlearn-run", "kind": "evaluate"}
    assert is_incomplete_run(tmp_path)  # a marker that never said complete: the run never completed
    marker.write_text(json.dumps({"format": "tlearn-run", "kind": "train", "complete": True}))
    assert not is_incomplete_run(tmp_path)


def test_overlap_with_the_data_is_refused_naming_the_option_and_both_folders(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()  # the messages name the data folder resolved
    data = tmp_path / "data"
    data.mkdir()
    refuse_overlap(data, None)  # no data folder: nothing to overlap
    refuse_overlap(tmp_path / "data2", data)  # a sibling whose name starts the same is another folder
    refuse_overlap(tmp_path / "runs" / "a", data)
    with pytest.raises(RunDirError) as raised:
        refuse_overlap(data / ".", data)
    assert str(raised.value) == f"--out {data}: is the data folder itself; write the run elsewhere"
    with pytest.raises(RunDirError) as raised:
        refuse_overlap(data / "runs" / "a", data)
    assert str(raised.value) == (
        f"--out {data / 'runs' / 'a'}: lies inside the data folder {data}; its files would be taken for images"
    )
    with pytest.raises(RunDirError) as raised:
        refuse_overlap(tmp_path, data, option="--report")
    assert str(raised.value) == f"--report {tmp_path}: contains the data folder {data}; write the run elsewhere"
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RunDirError, match="is the data folder itself"):
        refuse_overlap(Path("~/data"), data)  # `~` is the home folder, on either side
    with pytest.raises(RunDirError, match="is the data folder itself"):
        refuse_overlap(data, Path("~/data"))


def test_a_file_in_the_way_or_a_missing_run_to_resume_is_refused_and_nothing_is_created(tmp_path):
    (tmp_path / "taken").write_bytes(b"a file")
    with pytest.raises(RunDirError) as raised, OutputFolder.open(tmp_path / "taken", kind="train"):
        pass
    assert str(raised.value) == f"{tmp_path / 'taken'}: exists and is not a directory"
    with pytest.raises(RunDirError) as raised, OutputFolder.open(tmp_path / "new", kind="train", resume=True):
        pass
    assert str(raised.value) == f"{tmp_path / 'new'}: no run to resume (no unfinished tlearn run here)"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken").read_bytes() == b"a file"


def test_a_completed_folder_is_marked_complete_last_and_lists_exactly_what_was_written(tmp_path):
    root = tmp_path / "nested" / "evaluation"  # created with its parents
    with OutputFolder.open(root, kind="evaluate") as folder:
        assert folder.root == root and folder.kind == "evaluate"
        during = read_marker(root)
        assert during["complete"] is False and during["outputs"] == list(EVALUATION_OUTPUTS)
        write_outputs(root, {"figures/confusion.png": b"png", "metrics.json": b"{}", "notes.txt": b"not an output"})
    marker = read_marker(root)
    assert set(marker) == {"format", "kind", "complete", "outputs", "run_id", "tlearn_version", "updated"}
    assert marker["format"] == "tlearn-run" and marker["kind"] == "evaluate" and marker["complete"] is True
    assert marker["outputs"] == ["metrics.json", "figures"]  # in the contract's order; notes.txt is not ours
    assert marker["tlearn_version"] == tlearn.__version__
    assert re.fullmatch(r"[0-9a-f]{32}", marker["run_id"]) and marker["run_id"] != during["run_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", marker["updated"])


def test_a_failed_run_in_a_new_or_empty_folder_leaves_it_as_it_was(tmp_path):
    for root, existed in ((tmp_path / "new" / "run", False), (tmp_path / "empty", True)):
        if existed:
            root.mkdir()
        with pytest.raises(RuntimeError, match="disk full"), OutputFolder.open(root, kind="train"):
            write_outputs(root, {**OLD, "checkpoints/refit/half.pt": b"no state yet"})
            raise RuntimeError("disk full")
        assert root.is_dir() is existed  # a folder the run created goes; one that was there stays
        assert not existed or not any(root.iterdir())
    assert (tmp_path / "new").is_dir()  # only the folder the run created goes, not its parents
    # A file someone saved there meanwhile stays, and so does the folder holding it.
    root = tmp_path / "with-notes"
    with pytest.raises(RuntimeError), OutputFolder.open(root, kind="evaluate"):
        write_outputs(root, {"metrics.json": b"{}", "notes.txt": b"mine"})
        raise RuntimeError("disk full")
    assert snapshot(root) == {"notes.txt": b"mine"}


def test_a_training_run_that_reached_a_checkpoint_stays_to_be_resumed(tmp_path):
    root = tmp_path / "run"
    kept = unfinished(root)
    assert "checkpoints/refit/state.pt" in kept and "metrics.json" in kept and is_incomplete_run(root)
    with pytest.raises(RunDirError) as raised, OutputFolder.open(root, kind="train"):
        pass
    assert str(raised.value) == (
        f"{root}: already holds an unfinished run (continue it with resume=True); pass overwrite=True to replace "
        "it or choose another out=..."
    )
    with OutputFolder.open(root, kind="train", resume=True):
        assert snapshot(root) == kept and not (root / ASIDE_DIR).exists()  # resumed in place, nothing moved
        (root / "report.html").write_text("done")
    assert snapshot(root).items() >= {**OLD, "report.html": b"done"}.items()
    assert read_marker(root)["complete"] is True
    assert read_marker(root)["outputs"] == [
        "model",
        "metrics.json",
        "config.yaml",
        "report.html",
        "figures",
        "checkpoints",
    ]


def test_a_resume_that_fails_leaves_the_unfinished_run_as_it_found_it_still_resumable(tmp_path):
    # Killed before its first checkpoint (or a linear run, which writes none): the marker, config and outputs.
    root = tmp_path / "run"
    unfinished(root)
    shutil.rmtree(root / "checkpoints")
    kept = snapshot(root)
    with pytest.raises(KeyboardInterrupt), OutputFolder.open(root, kind="train", resume=True):
        (root / "report.html").write_text("half")
        raise KeyboardInterrupt
    assert snapshot(root).items() >= kept.items() and is_incomplete_run(root)
    with OutputFolder.open(root, kind="train", resume=True):  # and it can still be resumed
        pass
    assert read_marker(root)["complete"] is True


def test_resume_is_refused_for_anything_but_an_unfinished_training_run_with_its_config(tmp_path):
    complete, evaluation, no_config, empty = (
        tmp_path / name for name in ("complete", "evaluation", "no-config", "empty")
    )
    finished(complete, files={**OLD, "config.yaml": b"seed: 1\n"})
    unfinished(no_config)
    (no_config / "config.yaml").unlink()
    evaluation.mkdir()
    (evaluation / MARKER_FILE).write_text(json.dumps({"format": "tlearn-run", "kind": "evaluate", "complete": False}))
    (evaluation / "config.yaml").write_text("seed: 1\n")
    empty.mkdir()
    for root, reason in (
        (complete, "the run is already complete (nothing to resume)"),
        (evaluation, "no run to resume (no unfinished tlearn run here)"),
        (no_config, "no run to resume (no unfinished tlearn run here)"),
        (empty, "no run to resume (no unfinished tlearn run here)"),
    ):
        before = snapshot(root)
        with pytest.raises(RunDirError) as raised, OutputFolder.open(root, kind="train", resume=True):
            pass
        assert str(raised.value) == f"{root}: {reason}"
        assert snapshot(root) == before and root.is_dir()


def refusal(root, kind="train", **options):
    """The message of the RunDirError that opening `root` raises; the folder must be left byte for byte."""
    before = snapshot(root)
    with pytest.raises(RunDirError) as raised, OutputFolder.open(root, kind=kind, **options):
        pass
    assert snapshot(root) == before
    return str(raised.value)


def test_a_folder_that_is_not_free_for_this_run_is_refused_saying_what_it_holds(tmp_path):
    theirs = tmp_path / "theirs"
    write_outputs(theirs, {"a.jpg": b"", "b.jpg": b"", "c.jpg": b""})
    assert refusal(theirs, overwrite=True) == (
        f"{theirs}: holds files that tlearn did not write (a.jpg, b.jpg, c.jpg) and no {MARKER_FILE}; "
        "choose an empty or new out=..."
    )
    (theirs / "d.jpg").write_bytes(b"")
    assert f"(a.jpg, b.jpg, c.jpg, ...) and no {MARKER_FILE}" in refusal(theirs)
    (theirs / MARKER_FILE).write_text('{"kind": "train", "outputs": ["a.jpg"]}')  # another program's marker
    assert refusal(theirs, overwrite=True) == (
        f"{theirs / MARKER_FILE}: not a tlearn marker (unreadable, or written by another program); "
        "choose an empty or new out=..."
    )
    for kind, other, holds, this in (
        ("train", "evaluate", "a training run", "evaluation"),
        ("evaluate", "train", "an evaluation", "training run"),
        ("audit", "select", "a data audit", "backbone selection"),
        ("select", "audit", "a backbone selection", "data audit"),
    ):
        finished(tmp_path / kind, kind, files={})
        message = refusal(tmp_path / kind, other, overwrite=True)
        assert message == f"{tmp_path / kind}: holds {holds}; write this {this} elsewhere"
    finished(tmp_path / "evaluation", "evaluate", files={"metrics.json": b"{}"})
    assert refusal(tmp_path / "evaluation", "evaluate") == (
        f"{tmp_path / 'evaluation'}: already holds a previous run; pass overwrite=True to replace it or choose "
        "another out=..."
    )


def test_outputs_the_old_marker_does_not_list_are_never_replaced(tmp_path):
    root = tmp_path / "run"
    finished(root, files={"metrics.json": b"{}"})
    write_outputs(root, {"history.csv": b"mine", "model/weights.bin": b"mine", "tb/x": b"", "report.html": b""})
    assert refusal(root, overwrite=True) == (
        f"{root}: history.csv, model, report.html were not written by tlearn but this run would write them; "
        "move them away or choose another out=..."
    )
    marker = read_marker(root)
    listed_as_text = "metrics.json model history.csv report.html tb"  # hand-edited: a list of names, not text
    (root / MARKER_FILE).write_text(json.dumps({**marker, "outputs": listed_as_text}))
    assert "history.csv, metrics.json, model were not written by tlearn" in refusal(root, overwrite=True)


def test_names_edited_into_a_marker_never_reach_a_path(tmp_path):
    root = tmp_path / "run"
    finished(root, files={"metrics.json": b"old"})
    write_outputs(tmp_path, {"outside.txt": b"mine", "run/notes.txt": b"mine"})
    marker = read_marker(root)
    (root / MARKER_FILE).write_text(
        json.dumps({**marker, "outputs": ["metrics.json", "notes.txt", "../notes.txt", "../../outside.txt"]})
    )
    finished(root, files={"metrics.json": b"new"}, overwrite=True)
    assert (root / "metrics.json").read_bytes() == b"new"
    assert (root / "notes.txt").read_bytes() == b"mine" and (tmp_path / "outside.txt").read_bytes() == b"mine"


def test_overwrite_sets_the_listed_outputs_aside_and_deletes_them_only_once_the_new_run_completed(tmp_path):
    root = tmp_path / "run"
    finished(root)
    old_marker = (root / MARKER_FILE).read_bytes()
    (root / "notes.txt").write_text("mine")
    with OutputFolder.open(root, kind="train", overwrite=True):
        assert snapshot(root / ASIDE_DIR) == {**OLD, MARKER_FILE: old_marker}  # the old run, whole, marker too
        assert sorted(path.name for path in root.iterdir()) == [ASIDE_DIR, MARKER_FILE, "notes.txt"]
        assert read_marker(root)["complete"] is False
        write_outputs(root, {"metrics.json": b"new", "history.csv": b"new"})
    assert snapshot(root) == {
        "history.csv": b"new",
        "metrics.json": b"new",
        "notes.txt": b"mine",
        MARKER_FILE: (root / MARKER_FILE).read_bytes(),
    }
    assert read_marker(root)["outputs"] == ["metrics.json", "history.csv"] and read_marker(root)["complete"]


def test_a_failed_overwrite_puts_the_previous_run_back_byte_for_byte(tmp_path):
    root = tmp_path / "run"
    previous = finished(root)
    with pytest.raises(KeyboardInterrupt), OutputFolder.open(root, kind="train", overwrite=True):
        write_outputs(root, {"metrics.json": b"new", "history.csv": b"new", "notes.txt": b"mine"})
        raise KeyboardInterrupt  # Ctrl-C is a failure too
    assert snapshot(root) == {**previous, "notes.txt": b"mine"} and not (root / ASIDE_DIR).exists()


def test_a_replaced_output_that_is_a_link_is_deleted_as_a_link_never_through_it(tmp_path):
    elsewhere = tmp_path / "my-figures"
    write_outputs(elsewhere, {"loss.png": b"mine"})
    root = tmp_path / "run"
    with OutputFolder.open(root, kind="train"):
        (root / "figures").symlink_to(elsewhere, target_is_directory=True)
        (root / "metrics.json").symlink_to(elsewhere / "loss.png")
    finished(root, files={"history.csv": b"new"}, overwrite=True)
    assert snapshot(elsewhere) == {"loss.png": b"mine"}
    assert not os.path.lexists(root / "figures") and not os.path.lexists(root / "metrics.json")


def test_a_second_command_cannot_write_a_folder_while_a_run_holds_it(tmp_path):
    root = tmp_path / "run"
    finished(root)
    with OutputFolder.open(root, kind="train", overwrite=True):
        during = snapshot(root)
        with pytest.raises(RunDirError) as raised, OutputFolder.open(root, kind="train", overwrite=True):
            pass
        assert str(raised.value) == (
            f"{root}: another tlearn command is writing there right now; let it finish or choose another out=..."
        )
        assert settle_interrupted(root) == root / ASIDE_DIR  # a live run's kept copy is not put back under it
        assert snapshot(root) == during
        write_outputs(root, {"metrics.json": b"new"})
    # The lock ends with the block, whether the block succeeded, failed, or the folder was refused.
    with pytest.raises(RuntimeError), OutputFolder.open(root, kind="train", overwrite=True):
        raise RuntimeError("failed")
    (root / "history.csv").write_text("mine")
    with pytest.raises(RunDirError, match=r"history\.csv were not written by tlearn"):
        finished(root, overwrite=True)
    (root / "history.csv").unlink()
    finished(root, overwrite=True)


@pytest.mark.parametrize("platform", ["no flock (Windows)", "a file system without locks"])
def test_where_folders_cannot_be_locked_runs_are_still_written_and_replaced(tmp_path, monkeypatch, platform):
    from tlearn.runs import lifecycle

    def no_locks(descriptor, operation):
        raise OSError(37, "No locks available")

    if platform == "no flock (Windows)":
        monkeypatch.setattr(lifecycle, "fcntl", None)
    else:
        monkeypatch.setattr(lifecycle.fcntl, "flock", no_locks)
    root = tmp_path / "run"
    finished(root)
    finished(root, files={"metrics.json": b"new"}, overwrite=True)
    assert snapshot(root)["metrics.json"] == b"new" and read_marker(root)["complete"]
    assert not (root / ASIDE_DIR).exists()


def test_a_process_forked_by_a_run_does_not_keep_its_folder_locked(tmp_path):
    """Decoding pools and data loaders are forked while the run holds its folder; they may outlive it."""
    root = tmp_path / "run"
    started, done = os.pipe(), os.pipe()  # (read end, write end) each
    with OutputFolder.open(root, kind="train"):
        pid = os.fork()
        if pid == 0:  # the child says it runs (its fork hooks have run), waits for the parent, and never runs on
            try:
                os.write(started[1], b"started")
                os.read(done[0], 1)
            finally:
                os._exit(0)
        assert os.read(started[0], 7) == b"started"
    try:
        finished(root, files={"metrics.json": b"{}"}, overwrite=True)  # the child is still alive
    finally:
        os.write(done[1], b"x")
        os.waitpid(pid, 0)
        for descriptor in (*started, *done):
            os.close(descriptor)


def killed_inside_the_new_run(root, copy):
    """`copy`: the state a `kill -9` of an --overwrite of the complete run `root` leaves while it writes."""
    with pytest.raises(RuntimeError), OutputFolder.open(root, kind="train", overwrite=True):
        write_outputs(root, {"metrics.json": b"new", "history.csv": b"new"})
        shutil.copytree(root, copy, symlinks=True)
        raise RuntimeError("done copying")
    return copy


@contextmanager
def no_warning():
    """Within this block a RunFolderWarning (the folder was repaired) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunFolderWarning)
        yield


def test_the_next_command_puts_back_a_run_whose_overwrite_was_killed_while_it_wrote(tmp_path):
    root = tmp_path / "run"
    previous = finished(root)
    for opening in ("read", "overwrite"):
        killed = killed_inside_the_new_run(root, tmp_path / opening)
        message = f"{killed}: an --overwrite was interrupted before it completed; the previous run is back in place"
        with pytest.warns(RunFolderWarning, match=re.escape(message)):
            if opening == "read":
                assert settle_interrupted(killed) is None
            else:
                with OutputFolder.open(killed, kind="train", overwrite=True):
                    assert snapshot(killed / ASIDE_DIR) == {**OLD, MARKER_FILE: previous[MARKER_FILE]}
                    write_outputs(killed, {"metrics.json": b"newer"})
        if opening == "read":
            assert snapshot(killed) == previous  # the new run's outputs are gone, the old ones back
        else:
            assert snapshot(killed).keys() == {"metrics.json", MARKER_FILE} and read_marker(killed)["complete"]


def test_the_next_command_puts_back_a_run_whose_overwrite_was_killed_while_setting_it_aside(tmp_path):
    root = tmp_path / "run"
    previous = finished(root)
    (root / ASIDE_DIR).mkdir()
    (root / ASIDE_DIR / MARKER_FILE).write_bytes(previous[MARKER_FILE])  # saved first, then the moves began
    (root / "metrics.json").rename(root / ASIDE_DIR / "metrics.json")
    (root / "model").rename(root / ASIDE_DIR / "model")
    with pytest.warns(RunFolderWarning, match="the previous run is back in place"):
        assert settle_interrupted(root) is None
    assert snapshot(root) == previous and not (root / ASIDE_DIR).exists()


def test_a_run_killed_after_it_completed_is_kept_and_only_the_replaced_outputs_are_deleted(tmp_path):
    root = tmp_path / "run"
    finished(root)
    killed = killed_inside_the_new_run(root, tmp_path / "killed")
    marker = read_marker(killed)
    (killed / MARKER_FILE).write_text(json.dumps({**marker, "complete": True}))  # killed right after this
    (killed / ASIDE_DIR / "mine.txt").write_text("put here by hand")
    new = {name: content for name, content in snapshot(killed).items() if not name.startswith(ASIDE_DIR)}
    with no_warning():
        assert settle_interrupted(killed) == killed / ASIDE_DIR  # still there: it holds a file tlearn did not put
    assert snapshot(killed) == {**new, f"{ASIDE_DIR}/mine.txt": b"put here by hand"}
    (killed / ASIDE_DIR / "mine.txt").unlink()
    with no_warning():
        assert settle_interrupted(killed) is None
    assert snapshot(killed) == new and not (killed / ASIDE_DIR).exists()


def test_a_kept_copy_holding_nothing_but_a_half_written_marker_is_cleared(tmp_path):
    root = tmp_path / "run"
    previous = finished(root)
    for leftover in ({".tlearn-tmp-x1y2": b"{half"}, {}):  # killed while saving the marker; or an emptied copy
        write_outputs(root / ASIDE_DIR, leftover)
        (root / ASIDE_DIR).mkdir(exist_ok=True)
        with no_warning():
            assert settle_interrupted(root) is None
        assert snapshot(root) == previous and not (root / ASIDE_DIR).exists()


def test_a_kept_copy_tlearn_cannot_vouch_for_is_never_touched(tmp_path):
    root = tmp_path / "run"
    previous = finished(root)
    elsewhere = tmp_path / "elsewhere"
    write_outputs(elsewhere, {MARKER_FILE: previous[MARKER_FILE], "metrics.json": b"other"})
    (root / ASIDE_DIR).symlink_to(elsewhere, target_is_directory=True)  # a link: not a copy tlearn made
    marker = (root / MARKER_FILE).read_bytes()
    for damage in ("link", "lost marker", "foreign marker"):
        if damage == "lost marker":
            (root / ASIDE_DIR).unlink()
            shutil.copytree(elsewhere, root / ASIDE_DIR)
            (root / MARKER_FILE).unlink()
        if damage == "foreign marker":
            (root / MARKER_FILE).write_text('{"written by": "someone else"}')
        before = snapshot(root)
        with no_warning():
            assert settle_interrupted(root) == root / ASIDE_DIR, damage
        assert snapshot(root) == before and snapshot(elsewhere)[MARKER_FILE] == marker, damage


def test_an_unfinished_run_beside_a_copy_tlearn_did_not_make_is_never_touched(tmp_path):
    root = tmp_path / "run"
    unfinished(root)
    for marker in (None, b"{}", b"{half"):  # a backup made by hand, with no marker or another program's
        (root / ASIDE_DIR).mkdir(exist_ok=True)
        (root / ASIDE_DIR / "model.bak").write_bytes(b"my backup")
        if marker is not None:
            (root / ASIDE_DIR / MARKER_FILE).write_bytes(marker)
        before = snapshot(root)
        with no_warning():
            assert settle_interrupted(root) == root / ASIDE_DIR, marker
        assert snapshot(root) == before, marker
        assert "holds files tlearn cannot put back" in refusal(root, resume=True)


def test_a_file_standing_where_the_previous_run_goes_back_is_refused_and_both_are_kept(tmp_path):
    root = tmp_path / "run"
    previous = finished(root)
    aside = root / ASIDE_DIR
    aside.mkdir()
    (aside / MARKER_FILE).write_bytes(previous[MARKER_FILE])
    (root / "metrics.json").rename(aside / "metrics.json")
    (root / "metrics.json").write_text("saved by hand meanwhile")
    before = snapshot(root)
    with pytest.raises(RunDirError) as raised:
        settle_interrupted(root)
    assert str(raised.value) == (
        f"{root / 'metrics.json'}: stands where the previous run's metrics.json (kept at {aside}) goes back; "
        "move one of them away"
    )
    assert (
        snapshot(root).items()
        >= {"metrics.json": b"saved by hand meanwhile", f"{ASIDE_DIR}/metrics.json": OLD["metrics.json"]}.items()
    )
    assert snapshot(root).keys() == before.keys()


def test_a_replaced_run_that_cannot_be_deleted_leaves_the_new_run_complete_and_is_deleted_later(tmp_path, monkeypatch):
    root = tmp_path / "run"
    finished(root)

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", refused)
        aside = root / ASIDE_DIR
        message = (
            f"{aside}: the replaced run could not be deleted ([Errno 13] Permission denied: '{aside}/.*'); "
            f"the next command that opens {root} deletes it"
        )
        with pytest.warns(RunFolderWarning, match=re.escape(message).replace(re.escape(".*"), ".*")):
            new = finished(root, files={"metrics.json": b"new"}, overwrite=True)
    assert read_marker(root)["complete"] is True and (root / "metrics.json").read_bytes() == b"new"
    with no_warning():
        assert settle_interrupted(root) is None
    assert snapshot(root) == {name: content for name, content in new.items() if not name.startswith(ASIDE_DIR)}


def test_a_previous_run_the_file_system_refuses_to_move_back_is_reported_and_kept(tmp_path, monkeypatch):
    root = tmp_path / "run"
    previous = finished(root)
    aside = root / ASIDE_DIR
    aside.mkdir()
    (aside / MARKER_FILE).write_bytes(previous[MARKER_FILE])  # killed while setting the run aside
    (root / "metrics.json").rename(aside / "metrics.json")
    before = snapshot(root)

    def refused(self, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "rename", refused)
    with pytest.raises(RunDirError) as raised:
        settle_interrupted(root)
    assert str(raised.value) == (
        f"{root}: the previous run kept at {aside} could not be put back ([Errno 5] Input/output error); "
        "move its files back by hand"
    )
    assert snapshot(root) == before
