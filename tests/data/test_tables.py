"""Training from in-memory tables: a pandas DataFrame of (path, label[, split]) and a Hugging Face image dataset
become one label file under the cache, read like any other."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

import tlearn
from helpers import make_class_folder
from tlearn.data.tables import table_label_file
from tlearn.errors import DataError

pd = pytest.importorskip("pandas")


def rows_of(label_file: Path) -> list[dict[str, str]]:
    with label_file.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_dataframe_trains_like_its_label_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 10, "blue": 10})
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the current folder
    # Each class's first image validates; the rest take the hash split of their absolute path, which moves with
    # tmp_path, so without the pinned rows one draw in about 30 would leave validation empty.
    frame = pd.DataFrame(
        [
            {"path": str(path.relative_to(tmp_path)), "label": path.parent.name, "split": split}
            for path in sorted(data.rglob("*.png"))
            for split in ["val" if path.stem == "img_000" else ""]
        ]
    )
    label_file = table_label_file(frame, tmp_path / "cache")
    written = rows_of(label_file)
    assert [row["path"] for row in written] == [str(path) for path in sorted(data.rglob("*.png"))]
    assert {row["label"] for row in written} == {"red", "blue"}
    assert table_label_file(frame, tmp_path / "cache") == label_file  # the same table, the same file
    run = tlearn.train(frame, out=tmp_path / "run", quiet=True, mode="linear")
    assert run.config.data == label_file and run.config.follow_links
    assert sum(run.summary.embedding.model_dump()[key] for key in ("cache_hits", "computed")) == 20


def test_a_dataframe_keeps_its_splits_and_label_lists_and_names_missing_columns(tmp_path):
    data = make_class_folder(tmp_path / "data", {"red": 2, "blue": 2})
    files = sorted(data.rglob("*.png"))
    frame = pd.DataFrame(
        {
            "path": [str(path) for path in files],
            "label": [["red", "round"], "red", "blue", "blue"],
            "split": ["train", None, "val", "test"],
        }
    )
    written = rows_of(table_label_file(frame, tmp_path / "cache"))
    assert [row["label"] for row in written] == ["red|round", "red", "blue", "blue"]
    assert [row["split"] for row in written] == ["train", "", "val", "test"]
    with pytest.raises(DataError, match=r"DataFrame: no label column \(columns: path, class\)"):
        table_label_file(pd.DataFrame({"path": ["a.png"], "class": ["x"]}), tmp_path / "cache")


def hf_dataset(tmp_path, names=("red", "blue"), count=8):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    data = make_class_folder(tmp_path / "hf-source", {name: count for name in names})
    files = sorted(data.rglob("*.png"))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    return datasets, datasets.Dataset.from_dict(
        {
            "image": [Image.open(path).convert("RGB") for path in files],
            "label": [list(names).index(path.parent.name) for path in files],
        },
        features=features,
    )


def test_a_hugging_face_dataset_dict_keeps_its_splits_class_names_and_image_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    datasets, dataset = hf_dataset(tmp_path)
    halves = dataset.train_test_split(test_size=0.5, seed=0)
    splits = datasets.DatasetDict({"train": halves["train"], "validation": halves["test"]})
    label_file = table_label_file(splits, tmp_path / "cache")
    written = rows_of(label_file)
    assert [row["split"] for row in written] == ["train"] * 8 + ["val"] * 8
    assert {row["label"] for row in written} == {"red", "blue"}
    first = halves["train"].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    assert (label_file.parent / written[0]["path"]).read_bytes() == first  # no re-encoding
    assert table_label_file(splits, tmp_path / "cache") == label_file
    run = tlearn.train(splits, out=tmp_path / "run", quiet=True, mode="linear")
    assert run.metrics["val"]["n"] == 8 and run.config.data == label_file


def test_hugging_face_label_lists_become_label_sets_and_odd_datasets_are_refused(tmp_path):
    datasets, dataset = hf_dataset(tmp_path, count=2)
    tagged = datasets.Dataset.from_dict(
        {"image": dataset["image"], "tags": [[0, 1], [1], [0], []]},
        features=datasets.Features(
            {"image": datasets.Image(), "tags": datasets.Sequence(datasets.ClassLabel(names=["pool", "garage"]))}
        ),
    )
    assert [row["label"] for row in rows_of(table_label_file(tagged, tmp_path / "cache"))] == [
        "pool|garage",
        "garage",
        "pool",
        "",
    ]
    with pytest.raises(DataError, match=r"dataset split 'holdout': expected train, validation"):
        table_label_file(datasets.DatasetDict({"holdout": dataset}), tmp_path / "cache")
    with pytest.raises(DataError, match="needs an Image column and a label column"):
        table_label_file(dataset.remove_columns("label"), tmp_path / "cache")
    assert not any(name.startswith(".") for name in os.listdir(tmp_path / "cache" / "tables"))  # no staging left
