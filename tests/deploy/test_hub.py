"""`tlearn push` and `hf-hub:` model names: what goes up, the model card, and loading a pushed model back.

The Hub is not reachable here: the upload and the download are huggingface_hub calls replaced by fakes that
record what they were asked and serve a folder `push --local` wrote, which is exactly what an upload sends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import numpy as np
import pytest
from tests.helpers import run_cli

import tlearn
from tlearn.deploy.hub import STAGED_MARKER, push_model, stage_model
from tlearn.errors import ModelFileError, TlearnError
from tlearn.evaluation.intervals import wilson_interval
from tlearn.runs.hub_models import CARD_FILE, HubReference, local_model

MODEL_FILES = {"config.json", "model.safetensors"}
RECORDS = {"metrics.json", "run.json"}


def images_of(data: Path) -> list[Path]:
    return sorted(data.rglob("*.png"))


def test_push_local_writes_the_model_its_records_and_a_card_that_states_the_figures(exported_model, tmp_path, capsys):
    out = tmp_path / "staged"
    code, stdout, stderr = run_cli(capsys, "push", exported_model.run, "me/shapes", "--local", out)
    assert code == 0, stderr
    assert "staged:" in stdout
    assert {path.name for path in out.iterdir()} == MODEL_FILES | RECORDS | {CARD_FILE, STAGED_MARKER}
    card = (out / CARD_FILE).read_text(encoding="utf-8")
    assert card.startswith("---\nlibrary_name: tlearn\n")
    config = json.loads((out / "config.json").read_text())
    assert all(f"`{name}`" in card for name in config["classes"])
    for split, figures in config["metrics"].items():
        n = int(figures["n"])
        low, high = wilson_interval(round(figures["accuracy"] * n), n)
        assert f"| {n} | {figures['accuracy']:.1%} ({low:.1%}–{high:.1%}) |" in card, split
    assert 'tlearn.load("hf-hub:me/shapes")' in card and "tlearn predict hf-hub:me/shapes" in card
    assert "interpolation" in card and str(config["preprocessing"]["input_size"]) in card


def test_a_staged_model_scores_exactly_like_the_run(exported_model, tmp_path):
    out = stage_model(exported_model.run, tmp_path / "staged", repo_id="me/shapes")
    files = images_of(exported_model.data)
    run_model, staged_model = tlearn.load(exported_model.run, device="cpu"), tlearn.load(out, device="cpu")
    assert staged_model.classes == run_model.classes
    np.testing.assert_array_equal(staged_model.predict_proba(files), run_model.predict_proba(files))
    run_eval = tlearn.evaluate(exported_model.run, exported_model.data, quiet=True, device="cpu")
    staged_eval = tlearn.evaluate(out, exported_model.data, quiet=True, device="cpu")
    assert staged_eval.metrics == run_eval.metrics


def test_push_local_replaces_only_a_folder_it_wrote(exported_model, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, _, stderr = run_cli(capsys, "push", exported_model.run, "me/shapes", "--local", foreign)
    assert code == 2 and "already exists" in stderr and "--overwrite" in stderr
    code, _, stderr = run_cli(capsys, "push", exported_model.run, "me/shapes", "--local", foreign, "--overwrite")
    assert code == 2 and "not written by `tlearn push --local`" in stderr
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(TlearnError, match=r"already exists; choose another local=\.\.\. or pass overwrite=True"):
        tlearn.push(exported_model.run, "me/shapes", local=foreign)  # in Python, Python's words

    staged = tmp_path / "staged"
    assert run_cli(capsys, "push", exported_model.run, "me/first", "--local", staged)[0] == 0
    code, _, stderr = run_cli(capsys, "push", exported_model.run, "me/second", "--local", staged, "--overwrite")
    assert code == 0, stderr
    assert "hf-hub:me/second" in (staged / CARD_FILE).read_text() and "me/first" not in (staged / CARD_FILE).read_text()


@pytest.mark.parametrize(
    "name", ["hf-hub:", "hf-hub:a/b/c", "hf-hub:../x", "hf-hub:a/..", "hf-hub:me/x@", "hf-hub:-x/y", "hf-hub:a b/c"]
)
def test_malformed_hub_names_are_refused_before_any_download(name, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a malformed name must not reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    with pytest.raises(ModelFileError, match="not a Hub repository name"):
        local_model(name)


def test_hub_names_parse_owner_name_and_revision():
    assert HubReference.parse("hf-hub:me/shapes@v2") == HubReference("me/shapes", "v2")
    assert HubReference.parse("hf-hub:shapes") == HubReference("shapes", None)
    assert local_model("runs/shapes") == Path("runs/shapes")  # a path is not a Hub name


class FakeHub:
    """snapshot_download serving one staged folder, recording every call."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.calls = folder, []

    def __call__(self, repo_id, *, revision=None, allow_patterns=None):
        self.calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        return str(self.folder)


def test_a_hub_model_is_downloaded_without_foreign_files_and_predicts_like_the_run(
    exported_model, tmp_path, monkeypatch, capsys
):
    staged = stage_model(exported_model.run, tmp_path / "staged", repo_id="me/shapes")
    hub = FakeHub(staged)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    files = images_of(exported_model.data)
    loaded = tlearn.load("hf-hub:me/shapes@v1", device="cpu")
    np.testing.assert_array_equal(
        loaded.predict_proba(files), tlearn.load(exported_model.run, device="cpu").predict_proba(files)
    )
    assert hub.calls[0]["repo_id"] == "me/shapes" and hub.calls[0]["revision"] == "v1"
    # only the model's own file names are fetched: never a pickle or anything else the repository holds
    assert set(hub.calls[0]["allow_patterns"]) == MODEL_FILES | RECORDS | {CARD_FILE, "reject.safetensors"}
    code, stdout, stderr = run_cli(capsys, "predict", "hf-hub:me/shapes", files[0], "--device", "cpu")
    assert code == 0, stderr
    assert files[0].name in stdout


def test_a_failed_download_is_one_line_naming_the_model(monkeypatch, tmp_path, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /api/models/me/shapes\nsecond line")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    picture = tmp_path / "a.png"
    picture.write_bytes(b"")
    code, _, stderr = run_cli(capsys, "predict", "hf-hub:me/shapes", picture)
    assert code == 2
    assert stderr.strip() == (
        "error: hf-hub:me/shapes: cannot download the model from the Hub "
        "(Max retries exceeded with url: /api/models/me/shapes)"
    )


class FakeApi:
    """HfApi recording the repository it creates and the files of the folder it uploads."""

    uploads: ClassVar[list[dict]] = []

    def __init__(self, token=None) -> None:
        self.token = token

    def create_repo(self, repo_id, *, private=False, exist_ok=False):
        self.uploads.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        self.uploads[-1]["files"] = sorted(path.name for path in Path(folder_path).iterdir())
        self.uploads[-1]["message"] = commit_message


def test_push_uploads_the_staged_folder_without_the_local_marker(exported_model, monkeypatch):
    FakeApi.uploads = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_model(exported_model.run, "me/shapes", private=True)
    assert url == "https://huggingface.co/me/shapes"
    (upload,) = FakeApi.uploads
    assert upload["repo_id"] == "me/shapes" and upload["private"] and upload["exist_ok"]
    assert set(upload["files"]) == MODEL_FILES | RECORDS | {CARD_FILE}


def test_a_failed_upload_is_one_line(exported_model, monkeypatch):
    class Refused(FakeApi):
        def upload_folder(self, **kwargs):
            raise PermissionError("403 Forbidden: you cannot write to me/shapes\ndetails")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refused)
    with pytest.raises(TlearnError) as raised:
        push_model(exported_model.run, "me/shapes")
    assert str(raised.value) == "me/shapes: the upload to the Hub failed (403 Forbidden: you cannot write to me/shapes)"


def test_a_linked_file_in_the_run_is_never_staged(exported_model, tmp_path):
    """A link named metrics.json would upload whatever it points at (a key file, another project's records)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported_model.run, run)
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "hf_do_not_share"}')
    (run / "metrics.json").unlink()
    (run / "metrics.json").symlink_to(secret)
    with pytest.raises(TlearnError, match=r"metrics\.json: a symbolic link"):
        stage_model(run, tmp_path / "staged", repo_id="me/shapes")
    assert not (tmp_path / "staged").exists()


def test_the_card_says_a_model_was_taught_without_naming_the_teachers_path(exported_model):
    from tlearn.deploy.hub import model_card
    from tlearn.runs.model_dir import ModelConfig
    from tlearn.runs.summary import RunSummary, TeacherRecord

    config = ModelConfig(**json.loads((exported_model.run / "model" / "config.json").read_text()))
    teacher = TeacherRecord(
        model="/home/someone/private/lite2-run",
        backbone="tf_efficientnet_lite2",
        mode="linear",
        engine="torch",
        share=0.25,
        taught_images=40,
        accuracy={"val": 0.9, "test": 0.967},
    )
    card = model_card(config, None, RunSummary(teacher=teacher), repo_id="someone/taught")
    taught = "- taught by a tf_efficientnet_lite2 linear model (25% of the fine-tuning targets were its answers); "
    assert taught + "the teacher answered 96.7% of the test images right" in card and "private" not in card
    assert "taught by" not in model_card(config, None, RunSummary(), repo_id="someone/plain")


def test_the_card_of_a_pruned_model_says_it_does_not_load_into_timms_network_as_built(exported_model):
    from tlearn.deploy.hub import model_card
    from tlearn.runs.model_dir import ModelConfig

    config = ModelConfig(**json.loads((exported_model.run / "model" / "config.json").read_text()))
    plain = model_card(config, None, None, repo_id="someone/plain")
    assert "It is a plain timm model: `model.safetensors` loads into `timm.create_model(" in plain
    pruned = model_card(config.model_copy(update={"pruned": 1.5}), None, None, repo_id="someone/pruned")
    assert "channels pruned (1.5x less compute per image)" in pruned and "plain timm model" not in pruned
