"""Hostile review, issue 24: the run folder's lifecycle loses nothing, even when a process is killed.

1. `tlearn train ... --out R --overwrite` killed with SIGKILL (at any moment: while it moves the previous run
   aside, while it writes, after it completed) never leaves R unusable: the next command that opens R puts the
   previous run back (or keeps the new one, when it had completed), and the next --overwrite never deletes it.
   A run that is still alive is not mistaken for a killed one.
2. A folder without tlearn's marker is never taken for a run, however much it looks like one (another tool's
   config.yaml, metrics.json, model/config.json, model/pytorch_model.bin, figures/): refused in one line, untouched.

The kills are real SIGKILLs of a small child process that runs the lifecycle's own steps (no torch import, so each
costs a fraction of a second); `benchmarks/bench_overwrite_kill.py` kills real `tlearn train` processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tlearn
from helpers import PROJECT, make_class_folder, run_cli
from tlearn.errors import ModelFileError, RunDirError
from tlearn.runs.lifecycle import ASIDE_DIR, MARKER_FILE, OutputFolder, RunFolderWarning, read_marker
from tlearn.runs.model_dir import read_config
from tlearn.runs.records import read_run

ENV = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}

# A child that replaces the run in ROOT with --overwrite's steps and is killed (SIGKILL, by itself) at STAGE:
#   rename N  before its N-th rename (moving the previous run aside, or back while settling);
#             past the moves, inside the run, after it wrote part of its outputs
#   complete  after the new run's marker says complete, before the replaced run is deleted
#   hold      never killed: writes part of its outputs, says "ready", waits for ROOT/../go, then completes
#   settle    only opens ROOT for reading (what evaluate/predict do first), killed before its N-th rename
CHILD = r"""
import os, signal, sys, time
from pathlib import Path
from tlearn.runs import lifecycle

root, stage, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
renames = 0
real_rename = Path.rename

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def counted_rename(self, target):
    global renames
    if renames == count:
        die()
    renames += 1
    return real_rename(self, target)

if stage in ("rename", "settle"):
    Path.rename = counted_rename
if stage == "complete":
    lifecycle._discard_aside = lambda aside: die()
if stage == "settle":
    lifecycle.settle_interrupted(root)
    sys.exit(0)
with lifecycle.OutputFolder.open(root, kind="train", overwrite=True):
    (root / "metrics.json").write_text('{"new": true}')
    (root / "model").mkdir()
    (root / "model" / "config.json").write_text("{half-written")
    if stage == "rename":
        die()
    if stage == "hold":
        print("ready", flush=True)
        while not (root.parent / "go").exists():
            time.sleep(0.02)
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def child(root: Path, stage: str, count: int = -1, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), stage, str(count)], env=ENV, text=True, **options)


def killed(root: Path, stage: str, count: int = -1) -> None:
    """Run the child to its SIGKILL."""
    process = child(root, stage, count, stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): one complete tiny run, trained once; each test works on its own copy of it."""
    base = tmp_path_factory.mktemp("trained")
    data = make_class_folder(base / "data", {"red": 16, "blue": 16})
    run = base / "run"
    tlearn.train(data, out=run, quiet=True)
    (run / "notes.txt").write_text("mine")  # a user's file beside the run
    return data, run


@pytest.fixture
def previous_run(trained, tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """(data, a copy of the complete run, its snapshot: every file byte for byte)."""
    data, run = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return data, out, snapshot(out)


def open_to_overwrite(folder: Path, kind: str = "train") -> None:
    """Only the lifecycle's preparation and completion, around an empty run."""
    with OutputFolder.open(folder, kind=kind, overwrite=True):
        pass


def moves(run: Path) -> int:
    """How many renames setting the run aside takes (one per output it holds)."""
    return sum((run / name).exists() for name in read_marker(run)["outputs"])


# 1. A killed --overwrite


def test_kill_9_at_every_step_of_an_overwrite_leaves_the_previous_run_usable(previous_run):
    _, out, previous = previous_run
    assert moves(out) >= 8
    total = moves(out)
    for count in range(total + 1):  # before each move aside, then inside the new run
        killed(out, "rename", count)
        assert (out / ASIDE_DIR / MARKER_FILE).is_file()  # what was set aside is recognisably tlearn's copy
        assert read_marker(out)["complete"] is (count < total)  # the new marker comes after the moves
        with pytest.warns(RunFolderWarning, match="previous run is back"):
            read_config(out)  # what load, predict, evaluate, export and serve do first
        assert snapshot(out) == previous, f"killed before rename {count}"
        assert not (out / ASIDE_DIR).exists()


def test_kill_9_while_the_previous_run_is_being_put_back_is_finished_by_the_next_command(previous_run):
    _, out, previous = previous_run
    total = moves(out)
    killed(out, "rename", total)  # killed inside the new run
    for count in range(total):  # the command putting it back is killed in turn, before each move back
        again = out.with_name(f"again-{count}")
        shutil.copytree(out, again)
        killed(again, "settle", count)
        with pytest.warns(RunFolderWarning):
            read_config(again)
        assert snapshot(again) == previous, f"killed before moving back {count}"


def test_a_run_killed_after_it_completed_is_kept_and_the_replaced_run_is_deleted(previous_run):
    _, out, _ = previous_run
    killed(out, "complete")
    assert (out / ASIDE_DIR).is_dir()
    assert read_run(out).metrics == {"new": True}  # the report reads the new, complete run ...
    assert not (out / ASIDE_DIR).exists()  # ... and only then is the copy of the replaced one deleted
    assert (out / "notes.txt").read_text() == "mine" and read_marker(out)["complete"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "compare", "train"])
def test_every_command_that_opens_the_folder_puts_the_previous_run_back(previous_run, command, tmp_path, capsys):
    data, out, previous = previous_run
    killed(out, "rename", moves(out))
    assert not read_marker(out)["complete"] and (out / ASIDE_DIR).is_dir()
    arguments = {
        "predict": ["predict", out, data / "red" / "img_000.png", "--quiet"],
        "evaluate": ["evaluate", out, data, "--out", tmp_path / "evaluation", "--quiet"],
        "compare": ["compare", out],
        "train": ["train", data, "--out", out, "--quiet"],  # no --overwrite: refused, as for any previous run
    }[command]
    with pytest.warns(RunFolderWarning, match="previous run is back"):
        code, _, err = run_cli(capsys, *arguments)
    if command == "train":
        assert code == 2 and err.count("\n") == 1 and "already holds a previous run" in err, err
    else:
        assert code == 0, err
    assert snapshot(out) == previous and not (out / ASIDE_DIR).exists()


def test_the_report_of_a_killed_overwrite_is_the_previous_runs(previous_run):
    _, out, previous = previous_run
    killed(out, "rename", moves(out))
    with pytest.warns(RunFolderWarning):
        tlearn.write_report(out)
    assert snapshot(out).keys() == previous.keys()  # the report and figures written again, nothing else
    assert (out / "metrics.json").read_bytes() == previous["metrics.json"] and read_marker(out)["complete"]


def test_the_next_overwrite_after_a_kill_never_deletes_the_previous_run(previous_run, monkeypatch):
    """The review's sequence: kill -9 an --overwrite, kill the next one too, then one that fails."""
    data, out, previous = previous_run
    killed(out, "rename", moves(out))
    killed(out, "rename", moves(out))
    assert snapshot(out / ASIDE_DIR) != {}  # the previous run waits there, still

    def broken_report(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("tlearn.pipeline.write_report", broken_report)
    with pytest.warns(RunFolderWarning), pytest.raises(RuntimeError, match="disk full"):
        tlearn.train(data, out=out, quiet=True, overwrite=True, seed=5)
    assert snapshot(out) == previous
    tlearn.load(out)  # a usable, complete run


def test_a_live_overwrite_is_not_mistaken_for_a_killed_one(previous_run, tmp_path):
    _, out, previous = previous_run
    writer = child(out, "hold", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == "ready"
        during = snapshot(out)
        with pytest.raises(ModelFileError, match=re.escape(f"previous run is kept at {out / ASIDE_DIR}")):
            read_config(out)
        with pytest.raises(RunDirError, match="another tlearn command is writing there"):
            open_to_overwrite(out)
        assert snapshot(out) == during  # neither touched the live run nor the kept copy
        (tmp_path / "go").write_text("")
        assert writer.wait(timeout=60) == 0, writer.stderr.read()
    finally:
        writer.kill()
        writer.communicate()
    assert json.loads((out / "metrics.json").read_text()) == {"new": True}
    assert (out / "notes.txt").read_text() == "mine" and not (out / ASIDE_DIR).exists()
    assert previous["metrics.json"] != (out / "metrics.json").read_bytes()


# 2. Someone else's output folder


OTHER_TOOLS = {
    # A transformers/timm training script's output folder ...
    "train": {
        "config.yaml": b"lr: 0.001\n",
        "metrics.json": b'{"accuracy": 0.93}',
        "model/config.json": b'{"architectures": ["ViTForImageClassification"]}',
        "model/pytorch_model.bin": b"weights of three days of training",
        "figures/loss.png": b"\x89PNG not ours",
    },
    # ... and an evaluation script's.
    "evaluate": {
        "metrics.json": b'{"accuracy": 0.91}',
        "evaluation.json": b'{"split": "test"}',
        "predictions.csv": b"path,label\n",
        "figures/confusion.png": b"\x89PNG not ours either",
    },
}


def other_tools_folder(root: Path, kind: str) -> Path:
    """A folder in the layout of another tool's outputs: tlearn's file names, no tlearn marker."""
    for name, content in OTHER_TOOLS[kind].items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_another_tools_output_folder_is_never_taken_for_a_tlearn_run(tmp_path, kind):
    folder = other_tools_folder(tmp_path / "outputs", kind)
    with pytest.raises(RunDirError, match="tlearn did not write"):
        open_to_overwrite(folder, kind)
    assert snapshot(folder) == OTHER_TOOLS[kind]  # every file there, byte for byte, and nothing else
    assert not (folder / MARKER_FILE).exists() and not (folder / ASIDE_DIR).exists()


def test_train_and_evaluate_refuse_another_tools_folder_in_one_line(trained, tmp_path, capsys):
    data, run = trained
    for kind, arguments in (
        ("train", ["train", data, "--out", tmp_path / "train", "--overwrite", "--quiet"]),
        ("evaluate", ["evaluate", run, data, "--out", tmp_path / "evaluate", "--quiet"]),
    ):
        folder = other_tools_folder(tmp_path / kind, kind)
        code, _, err = run_cli(capsys, *arguments)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"error: {folder}: holds files that tlearn did not write")
        assert snapshot(folder) == OTHER_TOOLS[kind]


def test_a_marker_or_a_kept_copy_tlearn_did_not_write_is_never_touched(previous_run, tmp_path):
    # Another program's .tlearn-run.json: not ours, so neither is the folder.
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / MARKER_FILE).write_text('{"kind": "train", "outputs": ["notes.md"], "complete": true}')
    (folder / "notes.md").write_text("theirs")
    before = snapshot(folder)
    with pytest.raises(RunDirError, match="not a tlearn marker"):
        open_to_overwrite(folder)
    assert snapshot(folder) == before
    # A .tlearn-previous/ beside a tlearn run that tlearn did not make (a backup by hand): kept, never deleted.
    _, out, previous = previous_run
    (out / ASIDE_DIR).mkdir()
    (out / ASIDE_DIR / "model.bak").write_bytes(b"my backup")
    with pytest.raises(RunDirError, match=re.escape(f"{out / ASIDE_DIR}: holds files tlearn cannot put back")):
        open_to_overwrite(out)
    read_config(out)  # the run itself is still complete and usable
    assert snapshot(out) == {**previous, f"{ASIDE_DIR}/model.bak": b"my backup"}
