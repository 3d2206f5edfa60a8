"""The CLI: thin commands, machine-readable output, one-line errors with exit code 2."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

import tlearn
from helpers import PROJECT, make_class_folder, run_cli, write_broken_files
from tlearn.backbones import cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = make_class_folder(root / "data", {"red": 14, "blue": 14})
    run = tlearn.train(data, out=root / "run", quiet=True)
    return data, run.path


def test_train_prints_results_and_paths(capsys, tiny_data, tmp_path):
    code, out, err = run_cli(capsys, "train", tiny_data, "--out", tmp_path / "run", "--quiet")
    assert code == 0 and err == ""
    assert "val: accuracy" in out and f"model: {tmp_path / 'run' / 'model'}" in out


def test_each_figure_is_printed_once_on_stdout_with_its_interval(capsys, tiny_data, tmp_path):
    """Results go to stdout once (with their 95% interval); stderr carries progress only."""
    code, out, err = run_cli(capsys, "train", tiny_data, "--out", tmp_path / "run", "--mode", "linear")
    assert code == 0
    for split in ("val", "test", "cv"):
        lines = [line for line in (out + err).splitlines() if line.startswith(f"{split}: accuracy")]
        assert len(lines) == 1 and lines[0] in out.splitlines(), (split, lines)
        assert re.search(r"accuracy \d+\.\d% \(95% CI \d+\.\d–\d+\.\d%\)", lines[0]), lines[0]
    assert out.count("report: ") == 1 and err.index("data: 2 classes") < err.index("embeddings: ")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "{tmp}/missing"], "no such folder"),
        (["train", "{tmp}/one_class"], "at least two class folders"),
        (["train", "{data}", "--split", "0.5,0.5"], "expected three numbers"),
        (["train", "{data}", "--backbone", "resnt50", "--out", "{tmp}/r"], "did you mean resnet50"),
        (["train", "{data}", "--weights", "{tmp}/none.safetensors"], "weights file not found"),
        (["train", "{data}", "--device", "cuda", "--out", "{tmp}/r2"], "no CUDA GPU"),
        (["train", "--config", "{tmp}/bad.yaml"], "invalid configuration: epochs"),
        (["evaluate", "{tmp}", "{data}"], "not a tlearn model directory"),
        (["predict", "{tmp}/missing_model", "{data}"], "no such"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(capsys, tiny_data, tmp_path, arguments, message):
    make_class_folder(tmp_path / "one_class", {"only": 3})
    (tmp_path / "bad.yaml").write_text(f"data: {tiny_data}\nepochs: 0\n")
    args = [a.format(tmp=tmp_path, data=tiny_data) for a in arguments]
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (out, err)
    *before, last = err.splitlines()
    assert last.startswith("error: ") and message in last and "Traceback" not in err
    assert all(line.startswith("data: ") for line in before), before  # progress only: the data found, if any


def test_usage_errors_exit_2(capsys):
    code, _, err = run_cli(capsys, "train", "--mode", "sideways")
    assert code == 2 and "sideways" in err


def test_predict_formats_and_broken_files(capsys, trained, tmp_path):
    data, run = trained
    code, out, _ = run_cli(capsys, "predict", run, data / "red" / "img_000.png", "--format", "json", "-k", "1", "-q")
    assert code == 0
    answers = json.loads(out)
    assert answers[0]["labels"] == ["red"] and len(answers[0]["probabilities"]) == 1
    broken = tmp_path / "mixed"
    write_broken_files(broken)
    make_class_folder(broken, {"x": 2})
    code, out, err = run_cli(capsys, "predict", run, broken, "--format", "csv", "-q")
    assert code == 1 and "4 of 6 file(s) could not be read" in err
    lines = out.strip().splitlines()
    assert lines[0] == "source,rank,label,probability,error"
    assert sum("truncated" in line for line in lines) == 1 and sum(",1,red," in line for line in lines) == 2
    code, out, _ = run_cli(capsys, "predict", run, data / "blue", "-q")
    assert code == 0 and all(line.split("\t")[1].startswith("blue") for line in out.strip().splitlines())


def test_evaluate_writes_metrics(capsys, trained, tmp_path):
    data, run = trained
    code, out, _ = run_cli(capsys, "evaluate", run / "model", data, "--out", tmp_path / "eval", "-q")
    assert code == 0 and out.startswith("all: accuracy")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["all"]["n"] == 28 and metrics["all"]["accuracy"] > 0.9
    code, _, _ = run_cli(capsys, "evaluate", run, data, "--split", "test", "-q")
    assert code == 0


def test_evaluate_refuses_unknown_classes(capsys, trained, tmp_path):
    _, run = trained
    other = make_class_folder(tmp_path / "other", {"red": 2, "green": 2})
    code, _, err = run_cli(capsys, "evaluate", run, other)
    assert code == 2 and "green" in err


def test_backbones_and_cache_commands(capsys, tmp_path, monkeypatch):
    code, out, _ = run_cli(capsys, "backbones")
    assert code == 0 and "tf_efficientnet_lite0" in out and "timm" in out
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "embeddings" / "ns" / "ab").mkdir(parents=True)
    (tmp_path / "cache" / "embeddings" / "ns" / "ab" / "x.safetensors").write_bytes(b"0" * 1000)
    code, out, _ = run_cli(capsys, "cache", "info")
    # An entry of the one-file-per-embedding layout of earlier versions: listed, never read, cleared.
    assert code == 0 and str(tmp_path / "cache") in out and "1 entries of an older cache layout" in out
    data = make_class_folder(tmp_path / "data", {"red": 4, "blue": 4})
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)  # else files written just now are not indexed (racy stamps)
    tlearn.train(data, out=tmp_path / "run", quiet=True, mode="linear")
    code, out, _ = run_cli(capsys, "cache", "info")
    assert code == 0 and "8 images" in out and "files indexed: 8" in out
    code, out, _ = run_cli(capsys, "cache", "clear")
    assert code == 0 and "cleared" in out and not (tmp_path / "cache" / "embeddings").exists()


def test_python_dash_m_is_the_same_cli_and_errors_have_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}
    version = subprocess.run([sys.executable, "-m", "tlearn", "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("tlearn ")
    failed = subprocess.run(
        [sys.executable, "-m", "tlearn", "train", str(tmp_path / "nothing")], capture_output=True, text=True, env=env
    )
    assert failed.returncode == 2 and failed.stderr.strip().count("\n") == 0
    assert failed.stderr.startswith("error:") and "no such folder" in failed.stderr


@pytest.fixture(scope="module")
def answering(exported_model, tmp_path_factory):
    """Models with label sets and a reject rule (tests/answer_models.py)."""
    from answer_models import answer_models

    return answer_models(exported_model, tmp_path_factory)


def test_predict_answers_unknown_with_its_score_in_every_format_unless_told_not_to(capsys, answering):
    unseen, red = answering.unseen, answering.data / "red"
    code, out, _ = run_cli(capsys, "predict", answering.knn, unseen, red, "-k", "1", "-q")
    answers = [line.split("\t")[1] for line in out.strip().splitlines()]
    assert code == 0 and len(answers) == 4 + 14
    assert all(re.fullmatch(r"unknown \(score 0\.[0-5]\d\d\)", answer) for answer in answers[:4]), answers[:4]
    assert all(re.fullmatch(r"red \(score 0\.[6-9]\d\d\)", answer) for answer in answers[4:]), answers[4:]
    code, out, _ = run_cli(capsys, "predict", answering.knn_onnx, unseen, "--no-reject", "-k", "1", "-q")
    assert code == 0 and all(re.match(r"(blue|red) \(score 0\.[0-5]", line.split("\t")[1]) for line in out.splitlines())
    code, out, _ = run_cli(capsys, "predict", answering.knn, unseen, "--format", "csv", "-k", "2", "-q")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["source", "rank", "label", "probability", "error", "answer", "reject_score"]
    assert len(rows) == 8 and {row["answer"] for row in rows} == {"unknown"}
    assert all(0 < float(row["reject_score"]) < 0.6 for row in rows) and {row["label"] for row in rows} == {
        "blue",
        "red",
    }
    code, out, _ = run_cli(capsys, "predict", answering.knn, unseen, "--format", "json", "-q")
    first = json.loads(out)[0]
    assert first["label"] == "unknown" and first["unknown"] is True and first["reject_score"] < 0.6


def test_predict_gives_the_same_label_sets_on_the_onnx_file_as_on_the_model_directory(capsys, answering):
    outputs = {}
    for model in (answering.multilabel, answering.multilabel_onnx):
        code, out, _ = run_cli(capsys, "predict", model, answering.data, "--format", "json", "-k", "1", "-q")
        assert code == 0
        outputs[model] = [(item["source"], item["label_set"]) for item in json.loads(out)]
    directory, onnx_file = outputs.values()
    assert directory == onnx_file and any(len(label_set) == 2 for _, label_set in directory)
    code, out, _ = run_cli(capsys, "predict", answering.multilabel_onnx, answering.data, "--format", "csv", "-q")
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = {source: "|".join(label_set) for source, label_set in directory}
    assert all(row["answer"] == expected[row["source"]] and row["reject_score"] == "" for row in rows)
    code, out, _ = run_cli(capsys, "predict", answering.multilabel, answering.data, "-k", "1", "-q")
    assert {line.split("\t")[1] for line in out.splitlines()} == {"|".join(s) for _, s in directory}


def test_predict_prints_a_plain_models_answers_as_before(capsys, exported_model):
    code, out, _ = run_cli(
        capsys, "predict", exported_model.onnx, exported_model.data / "red", "--format", "json", "-q"
    )
    assert code == 0 and all(set(item) == {"source", "labels", "probabilities", "error"} for item in json.loads(out))
    code, out, _ = run_cli(capsys, "predict", exported_model.onnx, exported_model.data / "red", "-k", "1", "-q")
    assert all(re.fullmatch(r"\S+\tred [01]\.\d{3}", line) for line in out.splitlines())


def test_a_full_disk_is_one_line_that_names_the_file_not_an_internal_error(monkeypatch, capsys, tiny_data, tmp_path):
    """ENOSPC while a run writes is the user's to fix: one line naming the file (exit 1), no 'internal error'."""
    import errno
    import os

    from tlearn.util import atomic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(atomic, "write_bytes", full)
    code, _, err = run_cli(capsys, "train", tiny_data, "--out", tmp_path / "run", "--mode", "linear", "-q")
    assert code == 1 and err.count("\n") == 1 and "internal error" not in err
    assert err.startswith("error: No space left on device while writing ") and "config.yaml" in err


def test_help_groups_the_options_into_panels_and_lists_commands_as_a_user_meets_them(capsys):
    """`tlearn train --help` shows its many options in panels; every setting is in one; usage errors stay one
    line (no box) even though help is drawn with Rich."""
    from tlearn.cli.panels import PANEL_OF, PANELS
    from tlearn.config import TrainConfig

    assert set(PANEL_OF) == set(TrainConfig.model_fields) - {"data"}
    assert sum(len(names) for names in PANELS.values()) == len(PANEL_OF)  # none in two panels
    code, out, _ = run_cli(capsys, "train", "--help")
    titles = [re.search(rf"─ {re.escape(title)} ─", out) for title in PANELS]
    assert code == 0 and all(titles) and [t.start() for t in titles] == sorted(t.start() for t in titles)
    fine_tuning = out[titles[list(PANELS).index("Fine-tuning")].start() :]
    assert "--layer-decay" in fine_tuning.split("─ Compute ─")[0]
    code, out, _ = run_cli(capsys, "--help")
    order = [out.index(f"│ {name} ") for name in ("demo", "train", "evaluate", "predict", "export", "serve")]
    assert code == 0 and order == sorted(order)
    code, _, err = run_cli(capsys, "train", "--no-such-option")
    assert code == 2 and "Error: No such option: --no-such-option" in err and "╭" not in err
