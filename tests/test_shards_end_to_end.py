"""End to end on WebDataset shards: training and evaluating on shards of a pre-split folder's images gives the
folder's splits, predictions and metrics, and reads the images in place (nothing appears beside the shards)."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import tlearn
from helpers import TINY_BACKBONE, make_class_folder, tiny_backbone_weights


def _shards_of(folder: Path, out: Path) -> None:
    """folder/<split>/<class>/<file> → out/<split>/<split>-0.tar with <class>_<stem>.<ext> and .cls members."""
    for split_folder in sorted(folder.iterdir()):
        (out / split_folder.name).mkdir(parents=True)
        with tarfile.open(out / split_folder.name / f"{split_folder.name}-0.tar", "w") as archive:
            for image in sorted(split_folder.glob("*/*")):
                key = f"{image.parent.name}_{image.stem}"
                for name, payload in ((key + image.suffix, image.read_bytes()), (f"{key}.cls", image.parent.name)):
                    content = payload if isinstance(payload, bytes) else payload.encode()
                    info = tarfile.TarInfo(name)
                    info.size = len(content)
                    archive.addfile(info, io.BytesIO(content))


def _predictions(run: Path) -> list[tuple[str, ...]]:
    with open(run / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # folder: <split>/<class>/<stem>.png; shards: <split>/<split>-0.tar/<class>_<stem>.png
    return sorted(
        (row["split"], row["label"], row["path"].rsplit("/", 1)[1].removeprefix(f"{row['label']}_"), row["confidence"])
        for row in rows
    )


def test_shards_train_and_evaluate_like_the_folder_they_hold(tmp_path):
    folder = tmp_path / "folder"
    make_class_folder(folder / "train", {"red": 10, "blue": 10}, size=32)
    make_class_folder(folder / "val", {"red": 5, "blue": 5}, start=50, size=32)
    shards = tmp_path / "shards"
    _shards_of(folder, shards)
    before = sorted(path.relative_to(shards) for path in shards.rglob("*"))
    weights = tiny_backbone_weights(tmp_path)
    options = {"quiet": True, "backbone": TINY_BACKBONE, "weights": weights, "mode": "linear"}

    from_folder = tlearn.train(folder, out=tmp_path / "folder-run", **options)
    from_shards = tlearn.train(shards, out=tmp_path / "shard-run", **options)

    assert json.loads((tmp_path / "shard-run" / "data_report.json").read_text())["layout"] == "shards"
    assert from_shards.metrics == from_folder.metrics
    assert _predictions(tmp_path / "shard-run") == _predictions(tmp_path / "folder-run")
    evaluated = tlearn.evaluate(tmp_path / "shard-run", shards / "val" / "val-0.tar", quiet=True)
    on_folder = tlearn.evaluate(tmp_path / "folder-run", folder / "val", quiet=True)
    assert evaluated.split == on_folder.split == "all" and evaluated.metrics["all"]["n"] == 10
    assert evaluated.metrics == on_folder.metrics
    assert sorted(path.relative_to(shards) for path in shards.rglob("*")) == before  # nothing unpacked
    # A run on shards knows its validation images: an export is checked on them, as a folder run's is.
    from tlearn.runs.records import split_files

    assert len(split_files(tmp_path / "shard-run", "val")) == 10
    exported = tlearn.export(tmp_path / "shard-run" / "model", tmp_path / "model.onnx")
    first_check = exported.checks[0]
    assert (first_check.images, first_check.image_source) == (10, "the run's validation split")
