"""Labelled images held in memory: a pandas DataFrame of (path, label[, split]) rows, or a Hugging Face `datasets`
image dataset (a `Dataset`, or a `DatasetDict` of splits), turned into a label file tlearn reads like any other.

Everything after discovery (the cache keyed by image content, hash splits, the data check, `config.yaml` for
`--resume`) works on files, so a table is written once as `labels.csv` under the cache (`tables/<key>/`) and the
run trains on that file; the same table gives the same file, so a second run reuses it and its embeddings.

* DataFrame: a `path` and a `label` column (a label list, or `a|b`, for several labels), optionally `split`
  (train, val or test). Paths are resolved against the current folder and written absolute; the images stay
  where they are and are read from there (the run sets `follow_links`, as the table was built in the user's
  own code). An image's hash split is drawn from its absolute path.
* Hugging Face: the first `Image` column and the `label` column (else the first `ClassLabel`; a sequence of
  `ClassLabel` is multi-label). A `DatasetDict`'s splits keep their names (`validation`, `valid` and `dev` are
  val); a single `Dataset` is split by hash. The images are written under the table's folder as the bytes the
  dataset holds (no re-encoding), named by split and row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tlearn.data.label_files import LABEL_SEPARATOR
from tlearn.errors import DataError

TABLES_DIR = "tables"
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}


def is_table(data: Any) -> bool:
    """Whether `data` is a DataFrame or a Hugging Face dataset (anything else is a path)."""
    return is_dataframe(data) or _is_hf_dataset(data) or _is_hf_dataset_dict(data)


def table_label_file(data: Any, root: Path) -> Path:
    """The `labels.csv` (under `root/tables/`) that holds this table, written on first use.

    Raises:
        DataError: a DataFrame without `path` / `label` columns, a dataset without an image or label column, or
            a split name tlearn does not know.
    """
    if is_dataframe(data):
        rows = list(_dataframe_rows(data))
        return _written(root, _digest(rows), rows, images=None)
    splits = dict(data) if _is_hf_dataset_dict(data) else {None: data}
    fingerprints = [getattr(dataset, "_fingerprint", None) for dataset in splits.values()]
    key = "hf-" + _digest([[str(name), str(print_)] for name, print_ in zip(splits, fingerprints, strict=True)])
    if all(fingerprints) and (root / TABLES_DIR / key / "labels.csv").is_file():
        return root / TABLES_DIR / key / "labels.csv"
    rows, images = _dataset_rows(splits)
    return _written(root, key if all(fingerprints) else "hf-" + _digest(rows), rows, images)


def is_dataframe(data: Any) -> bool:
    """Whether `data` is a pandas DataFrame (its images are read where its paths point)."""
    return type(data).__name__ == "DataFrame" and hasattr(data, "columns") and hasattr(data, "itertuples")


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__name__ == "Dataset" and hasattr(data, "features") and hasattr(data, "cast_column")


def _is_hf_dataset_dict(data: Any) -> bool:
    return isinstance(data, Mapping) and bool(data) and all(_is_hf_dataset(value) for value in data.values())


def _dataframe_rows(frame: Any) -> Iterator[list[str]]:
    columns = [str(column) for column in frame.columns]
    missing = [name for name in ("path", "label") if name not in columns]
    if missing:
        raise DataError(f"DataFrame: no {' or '.join(missing)} column (columns: {', '.join(columns)})")
    has_split = "split" in columns
    for record in frame.to_dict("records"):
        path = Path(os.path.expanduser(str(record["path"])))
        split = record.get("split") if has_split else None
        yield [
            str(path if path.is_absolute() else Path.cwd() / path),
            _label_cell(record["label"]),
            "" if split is None or split != split else str(split),  # NaN != NaN: an empty cell
        ]


def _label_cell(value: Any) -> str:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        return LABEL_SEPARATOR.join(str(item) for item in value)
    return "" if value is None or value != value else str(value)


def _dataset_rows(splits: dict[str | None, Any]) -> tuple[list[list[str]], list[bytes]]:
    """(label-file rows with relative image paths, the images' bytes in row order)."""
    import datasets

    rows, images = [], []
    for name, dataset in splits.items():
        split = SPLIT_NAMES.get(str(name).lower()) if name is not None else ""
        if split is None:
            raise DataError(f"dataset split {name!r}: expected train, validation (or valid, val, dev) or test")
        image_column = next((key for key, f in dataset.features.items() if isinstance(f, datasets.Image)), None)
        label_column, names = _label_column(dataset.features, datasets)
        if image_column is None or label_column is None:
            raise DataError(
                f"dataset{'' if name is None else f' split {name!r}'}: needs an Image column and a label column "
                f"(features: {', '.join(dataset.features)})"
            )
        raw = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns(
            [image_column, label_column]
        )
        for index, record in enumerate(raw):
            content = _image_bytes(record[image_column], name, index)
            suffix = _suffix(content)
            rows.append([f"images/{split or 'all'}/{index:07d}{suffix}", _named(record[label_column], names), split])
            images.append(content)
    return rows, images


def _label_column(features: Mapping[str, Any], datasets: Any) -> tuple[str | None, list[str] | None]:
    """The label column and its class names (None: the values are the names)."""

    def names_of(feature: Any) -> list[str] | None:
        """The class names of a ClassLabel (or of a sequence of them); None for any other feature."""
        inner = getattr(feature, "feature", None) or (feature[0] if isinstance(feature, list) and feature else None)
        for candidate in (feature, inner):
            if isinstance(candidate, datasets.ClassLabel):
                return list(candidate.names)
        return None

    for key in ("label", "labels"):
        if key in features:
            return key, names_of(features[key])
    return next(((key, names_of(f)) for key, f in features.items() if names_of(f) is not None), (None, None))


def _named(value: Any, names: list[str] | None) -> str:
    if isinstance(value, (list, tuple)):
        return LABEL_SEPARATOR.join(_named(item, names) for item in value)
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return "" if value is None else str(value)


def _image_bytes(value: Any, split: str | None, index: int) -> bytes:
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    if isinstance(value, dict) and value.get("path") and Path(value["path"]).is_file():
        return Path(value["path"]).read_bytes()
    where = f"split {split!r} " if split is not None else ""
    raise DataError(f"dataset {where}row {index}: the image has neither bytes nor a readable file")


def _suffix(content: bytes) -> str:
    """The file suffix of an encoded image (the decoder checks the content itself; this only names the file)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as image:
            kind = (image.format or "").lower()
    except Exception:  # an undecodable image is written as is: the data check reports it like any bad file
        return ".bin"
    return {"jpeg": ".jpg", "tiff": ".tif"}.get(kind, f".{kind}" if kind else ".bin")


def _digest(rows: list[list[str]]) -> str:
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:24]


def _written(root: Path, key: str, rows: list[list[str]], images: list[bytes] | None) -> Path:
    """`root/tables/<key>/labels.csv` (with its images), written to a temporary folder and renamed into place,
    so a folder that exists is complete."""
    folder = root / TABLES_DIR / key
    if (folder / "labels.csv").is_file():
        return folder / "labels.csv"
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        for row, content in zip(rows, images or [], strict=False):
            (staging / row[0]).parent.mkdir(parents=True, exist_ok=True)
            (staging / row[0]).write_bytes(content)
        with (staging / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "split"])
            writer.writerows(rows)
        try:
            staging.rename(folder)
        except OSError:  # another process wrote the same table first: its copy is as good
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder / "labels.csv"
