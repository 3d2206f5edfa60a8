"""Finding the labelled images in a data folder and assigning each to a split.

Two layouts are accepted:

* `DATA/<class>/**/<image>`: every file's split comes from a hash of its path relative to DATA, so the
  split is stable across runs and machines, and adding files never moves an existing file to another split.
* `DATA/train/<class>/...`, `DATA/val/<class>/...` and optionally `DATA/test/<class>/...`: the user's own
  split. Without `val`, a validation split is carved out of `train` by the same path hash.

Nothing here decodes an image; that happens later, once per file content, with the outcome cached.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tlearn.data.images import is_hidden_name, is_image_name
from tlearn.errors import DataError

SPLITS = ("train", "val", "test")
# The automatic split (no --split): a fifth held out for the final test, then a fifth of the rest for
# validation. Below SMALL_FOLDER images a test split would be a handful of images that cannot measure
# anything while costing a fifth of the training data: there is none, and estimates come from validation
# and cross-validation instead.
LARGE_FOLDER_SPLIT = (0.64, 0.16, 0.20)
SMALL_FOLDER_SPLIT = (0.8, 0.2, 0.0)
SMALL_FOLDER = 150
# Only for evaluating on the hash splits of a class folder (`tlearn evaluate --split test`).
DEFAULT_SPLIT_FRACTIONS = LARGE_FOLDER_SPLIT


@dataclass(frozen=True)
class LabelledImage:
    """One image file with its class and split. `relpath` is relative to the data folder, '/'-separated."""

    path: Path
    relpath: str
    label: str
    split: str


@dataclass
class DataSource:
    """The labelled images found under a data folder, before any file is opened."""

    root: Path
    layout: str  # "class_folders" or "pre_split"
    classes: list[str]
    images: list[LabelledImage]
    ignored: list[str] = field(default_factory=list)  # relpaths that are not image files
    split_fractions: tuple[float, float, float] | None = None  # for hash-split layouts

    def in_split(self, split: str) -> list[LabelledImage]:
        """The images assigned to one split, in a stable order."""
        return [image for image in self.images if image.split == split]


def check_split_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    """Validate and normalise (train, val, test) fractions; train and val must be positive."""
    if len(fractions) != 3 or any(value < 0 for value in fractions):
        raise DataError(f"split fractions must be three non-negative numbers (train, val, test), got {fractions}")
    total = sum(fractions)
    if total <= 0 or fractions[0] <= 0 or fractions[1] <= 0:
        raise DataError(f"split fractions need a positive train and val share, got {fractions}")
    train, val, test = (value / total for value in fractions)
    return train, val, test


def path_fraction(relpath: str) -> float:
    """A number in [0, 1) fixed by the relative path alone: the basis of the stable split."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(relpath: str, fractions: tuple[float, float, float]) -> str:
    """train / val / test for a file, from its path hash and the (normalised) fractions."""
    position = path_fraction(relpath)
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


def auto_split_fractions(images: int) -> tuple[float, float, float]:
    """The split used without --split, for a folder of `images` labelled images.

    Example:
        >>> auto_split_fractions(40), auto_split_fractions(400)
        ((0.8, 0.2, 0.0), (0.64, 0.16, 0.2))
    """
    return SMALL_FOLDER_SPLIT if images < SMALL_FOLDER else LARGE_FOLDER_SPLIT


def discover(root: str | Path, *, split_fractions: tuple[float, float, float] | None = None) -> DataSource:
    """Find the labelled images under `root` and assign each to train / val / test.

    Args:
        root: `DATA/<class>/*` or `DATA/{train,val[,test]}/<class>/*`.
        split_fractions: (train, val, test) for a folder of classes (and train : val when carving validation
            out of a pre-split `train`); None: `auto_split_fractions` of the number of images.

    Raises:
        DataError: the folder does not exist, holds fewer than two classes, or a class holds no image.

    Example:
        >>> source = discover("data/")  # doctest: +SKIP
        >>> source.classes, len(source.in_split("train"))  # doctest: +SKIP
    """
    root = _existing_folder(root)
    if (root / "train").is_dir():
        fractions = check_split_fractions(split_fractions or LARGE_FOLDER_SPLIT)
        source = _discover_pre_split(root, fractions)
    else:
        images, classes, ignored = _scan_class_folders(root, prefix="")
        fractions = check_split_fractions(split_fractions or auto_split_fractions(len(images)))
        images = [_with_split(image, assign_split(image.relpath, fractions)) for image in images]
        source = DataSource(root, "class_folders", classes, images, ignored, fractions)
    _check_classes(source)
    return source


def discover_for_evaluation(root: str | Path, *, split: str | None = None) -> tuple[DataSource, str]:
    """The labelled images to evaluate a model on, and the name of the split they come from.

    A pre-split folder is evaluated on its `test` split (or `val` when there is no test); a folder of class
    sub-folders is evaluated as a whole (split "all") unless `split` picks one of its hash splits.
    """
    root = _existing_folder(root)
    if (root / "train").is_dir():
        source = _discover_pre_split(root, check_split_fractions(DEFAULT_SPLIT_FRACTIONS))
        present = [name for name in SPLITS if source.in_split(name)]
        chosen = split or ("test" if "test" in present else "val")
        if chosen == "all":
            return source, chosen
        if chosen not in present:
            raise DataError(f"{root}: split {chosen!r} holds no images (present: {', '.join(present)})")
        return _only_split(source, chosen), chosen
    images, classes, ignored = _scan_class_folders(root, prefix="")
    if not images:
        raise DataError(f"{root}: no images found. Expected {root}/<class>/*.jpg (or train/val/test folders)")
    if split in (None, "all"):
        return DataSource(root, "class_folders", classes, [_with_split(i, "all") for i in images], ignored), "all"
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of all, train, val, test")
    fractions = check_split_fractions(DEFAULT_SPLIT_FRACTIONS)
    chosen = [_with_split(i, assign_split(i.relpath, fractions)) for i in images]
    source = DataSource(root, "class_folders", classes, chosen, ignored, fractions)
    return _only_split(source, split), split


def list_image_files(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under the given folders.

    Files named explicitly are kept whatever their extension, so a mislabelled file still gets an answer;
    inside folders only image extensions count and hidden entries are skipped.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(path for path, _ in _walk_images(entry, ignored=[]))
        elif entry.exists():
            found.append(entry)
        else:
            raise DataError(f"{entry}: no such file or folder")
    return found


def _existing_folder(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such folder")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder. Expected a folder of class sub-folders (DATA/<class>/*.jpg)")
    return path.resolve()


def _discover_pre_split(root: Path, fractions: tuple[float, float, float]) -> DataSource:
    images, classes, ignored = _scan_class_folders(root / "train", prefix="train/")
    has_val = (root / "val").is_dir()
    if has_val:
        train_images = [_with_split(image, "train") for image in images]
    else:
        # Carve validation out of train with the same stable path hash (train : val keeps its ratio).
        val_share = fractions[1] / (fractions[0] + fractions[1])
        carve = (1.0 - val_share, val_share, 0.0)
        train_images = [_with_split(image, assign_split(image.relpath, carve)) for image in images]
    all_images = train_images
    for split in ("val", "test"):
        folder = root / split
        if not folder.is_dir():
            continue
        split_images, split_classes, split_ignored = _scan_class_folders(folder, prefix=f"{split}/")
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DataError(
                f"{folder}: class folder(s) {', '.join(unknown)} not present in {root / 'train'}; "
                "every class needs training images"
            )
        all_images += [_with_split(image, split) for image in split_images]
        ignored += split_ignored
    ignored += [entry.name for entry in root.iterdir() if entry.is_file() and not is_hidden_name(entry.name)]
    return DataSource(root, "pre_split", classes, all_images, ignored, None if has_val else fractions)


def _scan_class_folders(folder: Path, *, prefix: str) -> tuple[list[LabelledImage], list[str], list[str]]:
    """Images under folder/<class>/**, the class names (sorted) and the ignored non-image relpaths."""
    classes: list[str] = []
    images: list[LabelledImage] = []
    ignored: list[str] = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if is_hidden_name(entry.name):
            continue
        if not entry.is_dir():
            ignored.append(prefix + entry.name)
            continue
        classes.append(entry.name)
        for path, relpath in _walk_images(entry, ignored=ignored, prefix=f"{prefix}{entry.name}/"):
            images.append(LabelledImage(path=path, relpath=relpath, label=entry.name, split=""))
    return images, classes, ignored


def _walk_images(folder: Path, *, ignored: list[str], prefix: str = ""):
    """Yield (path, relpath) of image files under folder, sorted, skipping hidden entries."""
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        subdirs[:] = sorted(name for name in subdirs if not is_hidden_name(name))
        relative_dir = Path(directory).relative_to(folder).as_posix()
        relative_dir = "" if relative_dir == "." else relative_dir + "/"
        for name in sorted(files):
            if is_hidden_name(name):
                continue
            relpath = f"{prefix}{relative_dir}{name}"
            if is_image_name(name):
                yield Path(directory) / name, relpath
            else:
                ignored.append(relpath)


def _with_split(image: LabelledImage, split: str) -> LabelledImage:
    return LabelledImage(path=image.path, relpath=image.relpath, label=image.label, split=split)


def _only_split(source: DataSource, split: str) -> DataSource:
    kept = [image for image in source.images if image.split == split]
    return DataSource(source.root, source.layout, source.classes, kept, source.ignored, source.split_fractions)


def _check_classes(source: DataSource) -> None:
    where = source.root / "train" if source.layout == "pre_split" else source.root
    if len(source.classes) < 2:
        found = f"only {source.classes[0]!r}" if source.classes else "none"
        raise DataError(f"{where}: need at least two class folders, found {found}. Expected {where}/<class>/*.jpg")
    per_class = Counter(image.label for image in source.images if image.split == "train")
    for name in source.classes:
        if per_class.get(name, 0) == 0:
            total = sum(1 for image in source.images if image.label == name)
            if total == 0:
                raise DataError(
                    f"{where / name}: class {name!r} has no images (supported: jpg, png, bmp, gif, webp, tif)"
                )
            raise DataError(
                f"{where / name}: class {name!r} has {total} image(s) but none landed in the training split; "
                "add images or use pre-split train/val folders"
            )
