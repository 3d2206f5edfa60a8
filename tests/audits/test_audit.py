"""`tlearn audit` end to end on drawn images with the tiny backbone: what it finds, the three files it writes,
the folder rules it follows, and that it never touches the data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlearn
from helpers import TINY_BACKBONE, make_class_folder, run_cli, tiny_backbone_weights
from tlearn.audits.findings import AuditSettings
from tlearn.errors import DataError, RunDirError
from tlearn.runs.lifecycle import MARKER_FILE, read_marker

ODD = "a<b>&c"  # a class name that must be escaped in HTML
# The tiny random-weight backbone sees drawn images of one colour as near-copies of each other; only the
# byte-identical copy stays above this.
SETTINGS = AuditSettings(duplicate_similarity=0.99)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Red squares and blue circles (the second class named ODD) with three planted problems: a red square
    filed as ODD, a byte-identical copy of a red square filed as ODD, and a checkerboard among the red ones."""
    root = tmp_path_factory.mktemp("audit")
    data = make_class_folder(root / "data", {"red": 16, ODD: 16})
    shutil.move(data / "red" / "img_003.png", data / ODD / "moved_003.png")
    shutil.copy(data / "red" / "img_005.png", data / ODD / "copy_005.png")
    yy, xx = np.mgrid[:48, :48]
    checker = (((yy // 6 + xx // 6) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker).convert("RGB").save(data / "red" / "checker.png")
    return data, tiny_backbone_weights(root)


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
    data, weights = planted
    before = snapshot(data)
    out = tmp_path_factory.mktemp("out") / "audit"
    found = tlearn.audit(data, out=out, backbone=TINY_BACKBONE, weights=weights, settings=SETTINGS, quiet=True)
    assert snapshot(data) == before  # nothing under DATA was moved, renamed, added or changed
    return found


def test_the_misfiled_image_is_a_likely_label_error_with_its_true_class_suggested(audited):
    issues = {issue["path"]: issue for issue in audited.payload["label_issues"]}
    moved = issues[f"{ODD}/moved_003.png"]
    assert (moved["given"], moved["suggested"]) == (ODD, "red")
    assert moved["score"] == pytest.approx(1 - moved["p_given"], abs=1e-4) and moved["score"] > 0.5
    scores = [issue["score"] for issue in audited.payload["label_issues"]]
    assert scores == sorted(scores, reverse=True)
    assert audited.summary["label_issues"] == len(issues)


def test_the_identical_copy_is_a_near_duplicate_group_with_conflicting_labels(audited):
    groups = [group for group in audited.payload["near_duplicates"] if f"{ODD}/copy_005.png" in group["paths"]]
    assert len(groups) == 1
    group = groups[0]
    assert set(group["paths"]) == {f"{ODD}/copy_005.png", "red/img_005.png"}
    assert group["identical"] and group["conflicting_labels"] and group["consensus"] == "red"
    assert group["similarity"] == pytest.approx(1.0)


def test_the_checkerboard_is_an_outlier(audited):
    assert [row["path"] for row in audited.payload["outliers"]] == ["red/checker.png"]
    assert audited.payload["outliers"][0]["score"] > audited.payload["settings"]["outlier_fence"]


def test_the_class_overlap_table_and_cross_validation_are_reported(audited):
    payload = audited.payload
    assert payload["class_overlap"][0]["classes"] == sorted(["red", ODD])
    low, high = payload["summary"]["cv_accuracy_interval"]
    assert low <= payload["summary"]["cv_accuracy"] <= high
    assert payload["images"] == 34 and payload["backbone"]["arch"] == TINY_BACKBONE


def test_audit_json_is_the_returned_payload_and_review_csv_is_prefilled(audited):
    assert json.loads(audited.audit_json.read_text(encoding="utf-8")) == audited.payload
    lines = audited.review_csv.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "path,given,suggested,action,reason"
    rows = {row["path"]: row for row in audited.review}
    assert rows[f"{ODD}/moved_003.png"]["suggested"] == "red"
    assert rows[f"{ODD}/moved_003.png"]["action"] in ("relabel", "drop")
    assert rows[f"{ODD}/copy_005.png"]["action"] in ("relabel", "drop")
    assert rows["red/checker.png"]["action"] == "drop"  # an outlier the heads do not see as red either
    assert all(row["action"] in ("keep", "relabel", "drop") for row in audited.review)


def test_the_page_stands_alone_escapes_names_and_shows_thumbnails(audited):
    page = audited.page.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert ODD not in page and "a&lt;b&gt;&amp;c" in page
    assert page.count('src="data:image/jpeg;base64,') >= 4  # label errors, the duplicate pair, the outlier
    assert "moved_003.png" in page and "checker.png" in page


def test_tlearn_audit_stays_the_function_once_the_audits_package_is_imported():
    import tlearn.audits.findings  # importing a subpackage sets it as an attribute of tlearn

    assert callable(tlearn.audit) and callable(tlearn.select)


def test_the_audit_folder_follows_the_run_folder_rules(planted, tmp_path, monkeypatch):
    data, weights = planted
    out = tmp_path / "audit"
    options = {"backbone": TINY_BACKBONE, "weights": weights, "settings": SETTINGS, "quiet": True}
    tlearn.audit(data, out=out, **options)
    assert read_marker(out)["kind"] == "audit" and read_marker(out)["complete"]
    (out / "review.csv").write_text("edited by a person\n")
    with pytest.raises(RunDirError, match="overwrite=True"):
        tlearn.audit(data, out=out, **options)  # an edited review is never lost silently
    assert (out / "review.csv").read_text() == "edited by a person\n"
    with pytest.raises(RunDirError, match="holds a data audit"):
        tlearn.train(data, out=out, quiet=True)
    with pytest.raises(RunDirError, match="inside the data folder"):
        tlearn.audit(data, out=data / "audit", **options)

    def broken_page(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("tlearn.audits.folder.write_audit_page", broken_page)
    with pytest.raises(RuntimeError, match="disk full"):
        tlearn.audit(data, out=out, overwrite=True, **options)
    assert (out / "review.csv").read_text() == "edited by a person\n"  # the previous audit is back
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="disk full"):
        tlearn.audit(data, out=fresh, **options)
    assert not fresh.exists()  # a failed first audit leaves nothing behind
    monkeypatch.undo()
    tlearn.audit(data, out=out, overwrite=True, **options)
    assert (out / "review.csv").read_text().startswith("path,given,suggested,action")
    assert (out / MARKER_FILE).is_file()


def test_a_class_with_one_image_is_a_one_line_error(tmp_path, planted):
    _, weights = planted
    data = make_class_folder(tmp_path / "data" / "train", {"red": 6, "blue": 1}).parent
    make_class_folder(data / "val", {"red": 2})
    with pytest.raises(DataError, match="'blue' has 1 readable image"):
        tlearn.audit(data, out=tmp_path / "out", backbone=TINY_BACKBONE, weights=weights, quiet=True)
    assert not (tmp_path / "out").exists()


def test_the_cli_prints_the_findings_and_errors_in_one_line(planted, tmp_path, capsys):
    data, weights = planted
    out = tmp_path / "audit"
    code, stdout, _ = run_cli(
        capsys, "audit", data, "--out", out, "--backbone", TINY_BACKBONE, "--weights", weights, "-q"
    )
    assert code == 0
    assert "likely label errors:" in stdout and "outliers: 1" in stdout and f"--review {out / 'review.csv'}" in stdout
    code, stdout, stderr = run_cli(capsys, "audit", tmp_path / "missing", "--out", tmp_path / "x")
    assert code == 2 and stderr.strip().count("\n") == 0 and "no such folder" in stderr


def test_a_second_audit_on_cached_embeddings_never_imports_torch(planted, tmp_path, monkeypatch):
    data, weights = planted
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))  # a cache no other test run can touch
    options = f"backbone={TINY_BACKBONE!r}, weights={str(weights)!r}, quiet=True"
    tlearn.audit(data, out=tmp_path / "first", backbone=TINY_BACKBONE, weights=weights, quiet=True)
    code = (
        "import sys, tlearn\n"
        f"tlearn.audit({str(data)!r}, out={str(tmp_path / 'second')!r}, {options})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
