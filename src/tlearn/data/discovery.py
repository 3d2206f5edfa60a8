"""Finding the labelled images in a data folder and assigning each to a split.

Two layouts are accepted:

* `DATA/<class>/**/<image>`: every file's split comes from a hash of its path relative to DATA, so the
  split is stable across runs and machines, and adding files never moves an existing file to another split.
* `DATA/train/<class>/...`, `DATA/val/<class>/...` and optionally `DATA/test/<class>/...`: the user's own
  split. Without `val`, a validation split is carved out of `train` by the same path hash.

A third source is a label file (`labels.csv`, `.json`, `.jsonl`; see `tlearn.data.label_files`): its rows give
the images, their labels (several per image for multi-label data) and optionally their splits; rows without a
split are split by the same path hash as a class folder.

A fourth is WebDataset tar shards (a folder of `*.tar` files, `train/`, `val/`, `test/` folders of them, or one
`.tar` file; see `tlearn.data.webdataset`), read like a label file whose rows are the shards' labelled images:
their paths are `<shard>.tar/<member>`, and nothing is unpacked.

Nothing here decodes an image; that happens later, once per file content, with the outcome cached.

Symbolic links: a walk never loops (a folder reached again through a link is not walked again), a link that
leads outside DATA is skipped and listed with the ignored files unless `follow_links=True` (so a stray link to
`/` or to another data set never slips in), and a file reachable by several paths (links, hard links) is
counted once, at its real path when it has one. File names that are not UTF-8 (`caf\\xe9.jpg`) are kept as
Python reads them (with surrogate escapes): they open, hash and split like any other name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tlearn.data.images import is_hidden_name, is_image_name
from tlearn.data.label_files import LABEL_SEPARATOR, LabelRow, LabelTask, is_label_file, read_label_file
from tlearn.data.webdataset import find_shards, read_shard_rows, shard_images
from tlearn.errors import DataError

SPLITS = ("train", "val", "test")
# The automatic split (no --split), the same for every folder size: each file's path hash falls in a fixed
# bucket, 64% train, 16% val, 20% test, so adding images never moves an existing one to another split (a rule
# that changed with the folder's size moved a third of a folder's images when it crossed the size). The test
# split costs the shipped model nothing: by default it learns from every image once the test split has been
# measured (`--final-fit all`); on a small folder the test figure is rough, and the report says how rough.
AUTO_SPLIT = (0.64, 0.16, 0.20)
# Only for evaluating on the hash splits of a class folder (`tlearn evaluate --split test`).
DEFAULT_SPLIT_FRACTIONS = AUTO_SPLIT


@dataclass(frozen=True)
class LabelledImage:
    """One image file with its class and split. `relpath` is relative to the data folder, '/'-separated."""

    path: Path
    relpath: str
    label: str  # the first (for single-label data, the only) label
    split: str
    extra_labels: tuple[str, ...] = ()  # the image's other labels (multi-label data from a label file)

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label of the image, the first one first."""
        return (self.label, *self.extra_labels)


@dataclass
class DataSource:
    """The labelled images found under a data folder, before any file is opened."""

    root: Path
    layout: str  # "class_folders", "pre_split", "label_file" or "shards"
    classes: list[str]
    images: list[LabelledImage]
    ignored: list[str] = field(default_factory=list)  # relpaths that are not image files
    split_fractions: tuple[float, float, float] | None = None  # for hash-split layouts
    label_file: Path | None = None  # the CSV/JSON the labels came from ("label_file" layout; root is its folder)
    problems: list[str] = field(default_factory=list)  # label-file rows left out, with their line numbers

    @property
    def has_label_sets(self) -> bool:
        """Whether any image carries several labels (a multi-label run unless the task is set otherwise)."""
        return any(image.extra_labels for image in self.images)

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
    """A number in [0, 1) fixed by the relative path alone: the basis of the stable split.

    The path is hashed as the bytes of its name on disk: UTF-8 for ordinary names, and the original bytes of a
    name that is not UTF-8 (surrogate escapes), which `str.encode("utf-8")` alone would refuse.
    """
    digest = hashlib.sha256(relpath.encode("utf-8", errors="surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(relpath: str, fractions: tuple[float, float, float]) -> str:
    """train / val / test for a file, from its path hash and the (normalised) fractions."""
    position = path_fraction(relpath)
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


def discover(
    root: str | Path,
    *,
    split_fractions: tuple[float, float, float] | None = None,
    follow_links: bool = False,
    label_sep: str = LABEL_SEPARATOR,
    task: LabelTask = "auto",
) -> DataSource:
    """Find the labelled images under `root` and assign each to train / val / test.

    Args:
        root: `DATA/<class>/*`, `DATA/{train,val[,test]}/<class>/*`, a label file (`.csv`, `.json`, `.jsonl`),
            or WebDataset shards (`DATA/*.tar`, `DATA/{train,val[,test]}/*.tar`, or one `.tar` file).
        split_fractions: (train, val, test) for a folder of classes (and train : val when carving validation
            out of a pre-split `train`); None: the automatic 64/16/20 (`AUTO_SPLIT`).
        follow_links: also follow symbolic links that lead outside `root` (else they are skipped and listed
            in `ignored`), and read a label file's rows naming files outside its folder (else each is a problem
            line). Links inside `root` are always followed.
        label_sep: a label file's separator of several labels in one cell.
        task: "multiclass" leaves out (and reports) a label file's images with several labels.

    Raises:
        DataError: the folder does not exist, holds fewer than two classes, or a class holds no image.

    Example:
        >>> source = discover("data/")  # doctest: +SKIP
        >>> source.classes, len(source.in_split("train"))  # doctest: +SKIP
    """
    if is_label_file(root):
        options = {"label_sep": label_sep, "task": task, "follow_links": follow_links}
        source = _discover_label_file(Path(root).expanduser(), split_fractions, **options)
        _check_classes(source, _Walk(source.root, follow_links))
        return source
    shards = find_shards(root, follow_links=follow_links)
    if shards is not None:
        rows, ignored = read_shard_rows(shards, task=task)
        images, fractions = _split_rows(rows, split_fractions)
        source = DataSource(shards.root, "shards", _classes(images), images, ignored, fractions)
        _check_classes(source, _Walk(source.root, follow_links))
        return source
    root = _existing_folder(root)
    walk = _Walk(root, follow_links)
    if (root / "train").is_dir():
        fractions = check_split_fractions(split_fractions or AUTO_SPLIT)
        source = _discover_pre_split(root, fractions, walk)
    else:
        images, classes, ignored = _scan_class_folders(root, prefix="", walk=walk)
        images = walk.count_once(images)
        fractions = check_split_fractions(split_fractions or AUTO_SPLIT)
        images = [_with_split(image, assign_split(image.relpath, fractions)) for image in images]
        source = DataSource(root, "class_folders", classes, images, ignored + walk.notes, fractions)
    _check_classes(source, walk)
    return source


def discover_for_evaluation(
    root: str | Path,
    *,
    split: str | None = None,
    fractions: tuple[float, float, float] | None = None,
    follow_links: bool = False,
    label_sep: str = LABEL_SEPARATOR,
    task: LabelTask = "auto",
) -> tuple[DataSource, str]:
    """The labelled images to evaluate a model on, and the name of the split they come from.

    A pre-split folder is evaluated on its `test` split (or `val` when there is no test); a folder of class
    sub-folders, like shards without split folders, is evaluated as a whole (split "all") unless `split` picks
    one of its hash splits. The hash splits are drawn with `fractions`: the model's own
    (`ModelConfig.split_fractions`), so `--split test` is the test split its run measured (None: the default
    fractions). Symbolic links, `label_sep` and `task` are handled as by `discover`.
    """
    fractions = check_split_fractions(fractions or DEFAULT_SPLIT_FRACTIONS)
    if is_label_file(root):
        options = {"label_sep": label_sep, "task": task, "follow_links": follow_links}
        return _label_file_for_evaluation(Path(root).expanduser(), split, fractions, **options)
    shards = find_shards(root, follow_links=follow_links)
    if shards is not None:
        rows, ignored = read_shard_rows(shards, task=task)
        images, chosen = _evaluation_images(rows, split, fractions, shards.root)
        return DataSource(shards.root, "shards", _classes(images), images, ignored), chosen
    root = _existing_folder(root)
    walk = _Walk(root, follow_links)
    if (root / "train").is_dir():
        source = _discover_pre_split(root, fractions, walk)
        present = [name for name in SPLITS if source.in_split(name)]
        chosen = split or ("test" if "test" in present else "val")
        if chosen == "all":
            return source, chosen
        if chosen not in present:
            raise DataError(f"{root}: split {chosen!r} holds no images (present: {', '.join(present)})")
        return _only_split(source, chosen), chosen
    images, classes, ignored = _scan_class_folders(root, prefix="", walk=walk)
    images, ignored = walk.count_once(images), ignored + walk.notes
    if not images:
        raise DataError(f"{root}: no images found. Expected {root}/<class>/*.jpg (or train/val/test folders)")
    if split in (None, "all"):
        return DataSource(root, "class_folders", classes, [_with_split(i, "all") for i in images], ignored), "all"
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of all, train, val, test")
    chosen = [_with_split(i, assign_split(i.relpath, fractions)) for i in images]
    source = DataSource(root, "class_folders", classes, chosen, ignored, fractions)
    return _only_split(source, split), split


def list_image_files(paths: list[str | Path], *, follow_links: bool = True) -> list[Path]:
    """Image files named directly or found (recursively, sorted) under the given folders.

    Files named explicitly are kept whatever their extension, so a mislabelled file still gets an answer;
    inside folders only image extensions count and hidden entries are skipped. Links are followed by default
    (the user named these folders to be predicted, and nothing is learnt from them), but never round a loop,
    and a file reached twice in one folder is listed once. The images inside WebDataset shards (a `.tar` file, or
    a folder of them) are listed as paths inside their shards.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        members = shard_images(entry)
        found.extend(members)
        if entry.is_dir():
            walk = _Walk(entry.resolve(), follow_links)
            images = [
                LabelledImage(path, relpath, "", "") for path, relpath in walk.files(entry, prefix="", ignored=[])
            ]
            found.extend(image.path for image in walk.count_once(images))
        elif members:
            continue
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


def _discover_pre_split(root: Path, fractions: tuple[float, float, float], walk: _Walk) -> DataSource:
    train = root / "train"
    scanned = _scan_class_folders(train, prefix="train/", walk=walk) if walk.may_enter(train, "train") else None
    images, classes, ignored = scanned or ([], [], [])
    # A val/ or test/ the walk may not enter (a link out of the folder, without --follow-links) counts as absent:
    # validation is then carved from train, as for a folder without val/.
    usable = {split: (root / split).is_dir() and walk.may_enter(root / split, split) for split in ("val", "test")}
    has_val = usable["val"]
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
        if not usable[split]:
            continue
        split_images, split_classes, split_ignored = _scan_class_folders(folder, prefix=f"{split}/", walk=walk)
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DataError(
                f"{folder}: class folder(s) {', '.join(unknown)} not present in {root / 'train'}; "
                "every class needs training images"
            )
        all_images += [_with_split(image, split) for image in split_images]
        ignored += split_ignored
    ignored += [entry.name for entry in root.iterdir() if entry.is_file() and not is_hidden_name(entry.name)]
    all_images = walk.count_once(all_images)
    return DataSource(root, "pre_split", classes, all_images, ignored + walk.notes, None if has_val else fractions)


def _scan_class_folders(folder: Path, *, prefix: str, walk: _Walk) -> tuple[list[LabelledImage], list[str], list[str]]:
    """Images under folder/<class>/**, the class names (sorted) and the ignored non-image relpaths."""
    images: list[LabelledImage] = []
    ignored: list[str] = []
    class_folders: list[Path] = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if is_hidden_name(entry.name):
            continue
        if entry.is_dir():
            class_folders.append(entry)
        else:
            ignored.append(prefix + entry.name)
    class_folders = walk.claim_class_folders(class_folders, prefix)
    for entry in class_folders:
        for path, relpath in walk.files(entry, prefix=f"{prefix}{entry.name}/", ignored=ignored):
            images.append(LabelledImage(path=path, relpath=relpath, label=entry.name, split=""))
    return images, [entry.name for entry in class_folders], ignored


FileKey = tuple[int, int]  # (st_dev, st_ino): the file itself, whatever path reached it


@dataclass
class _Walk:
    """One discovery's walk over a data folder: loop-free, links outside it skipped, each file counted once.

    `notes` collects one line per link that was not followed and per file found twice, for the data report.
    """

    root: Path  # resolved
    follow_links: bool
    notes: list[str] = field(default_factory=list)
    _found: dict[str, tuple[FileKey, bool]] = field(default_factory=dict)  # relpath → (file, reached via a link)
    _walked: set[FileKey] = field(default_factory=set)  # folders walked or claimed (the root, class folders)
    _class_folders: dict[FileKey, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._walked.add(_key(self.root.stat()))  # a link back to DATA itself is never walked

    def claim_class_folders(self, folders: list[Path], prefix: str) -> list[Path]:
        """The class folders to walk, registered before any walk starts.

        Real folders first, then links (inside DATA, or anywhere with `follow_links`) that lead to a folder that
        is not a class already: a link to another class folder is not a class of its own, and no class folder
        is ever walked as part of another class.
        """
        kept = [folder for folder in folders if not folder.is_symlink()]
        for folder in kept:
            self._claim(folder)
        for folder in folders:
            if not folder.is_symlink() or not self.may_enter(folder, prefix + folder.name):
                continue
            key = _key(folder.stat())
            if key in self._class_folders:
                name = self._class_folders[key]
                self.notes.append(f"{prefix}{folder.name} (symbolic link to the class folder {name}; not a class)")
                continue
            self._claim(folder)
            kept.append(folder)
        return sorted(kept, key=lambda folder: folder.name)

    def may_enter(self, folder: Path, relpath: str) -> bool:
        """Whether a top-level folder (a class folder, or `val`/`test` of a pre-split layout) may be walked."""
        return not folder.is_symlink() or self._link_allowed(folder, relpath)

    def _claim(self, folder: Path) -> None:
        key = _key(folder.stat())
        self._class_folders[key] = folder.name
        self._walked.add(key)

    def files(self, folder: Path, *, prefix: str, ignored: list[str]) -> Iterator[tuple[Path, str]]:
        """(path, relpath) of the image files under `folder`, sorted, each folder's files before its sub-folders.

        Non-image files go to `ignored`; hidden entries are skipped.
        """
        # (folder, relpath prefix, folders on the way down (loop guard), reached through a link)
        top = _key(folder.stat())
        self._walked.add(top)
        stack = [(folder, prefix, frozenset({top}), folder.is_symlink())]
        while stack:
            directory, relative, ancestors, via_link = stack.pop()
            try:
                entries = sorted(os.scandir(directory), key=lambda item: item.name)
            except OSError as error:
                self.notes.append(f"{relative or directory.name} (folder not readable: {error.strerror or error})")
                continue
            subfolders = []
            for entry in entries:
                if is_hidden_name(entry.name):
                    continue
                relpath = relative + entry.name
                is_link = entry.is_symlink()
                if is_link and not self._link_allowed(Path(entry.path), relpath):
                    continue
                try:
                    is_dir = entry.is_dir()
                    stat = entry.stat() if (is_dir or is_image_name(entry.name)) else None
                except OSError as error:
                    what = "broken symbolic link" if is_link else "unreadable"
                    self.notes.append(f"{relpath} ({what}: {error.strerror or error})")
                    continue
                if is_dir:
                    subfolders.append((entry, relpath, _key(stat), is_link))
                elif not is_image_name(entry.name):
                    ignored.append(relpath)
                elif stat is not None:
                    self._found[relpath] = (_key(stat), via_link or is_link)
                    yield Path(directory) / entry.name, relpath
            for entry, relpath, key, is_link in reversed(subfolders):
                # A real folder is walked unless it is its own ancestor (bind mounts); one reached through a link
                # only if no walk has been there yet, so links never go round a loop or repeat a folder.
                if key in ancestors or ((is_link or via_link) and key in self._walked):
                    if is_link:
                        self.notes.append(f"{relpath} (symbolic link to a folder already scanned; not followed again)")
                    continue
                self._walked.add(key)
                stack.append((Path(directory) / entry.name, relpath + "/", ancestors | {key}, via_link or is_link))

    def count_once(self, images: list[LabelledImage]) -> list[LabelledImage]:
        """Each file once: at its first real path, else at the first link that reached it; the rest noted."""
        chosen: dict[FileKey, LabelledImage] = {}
        for image in images:
            key, via_link = self._found[image.relpath]
            current = chosen.get(key)
            if current is None or (self._found[current.relpath][1] and not via_link):
                chosen[key] = image
        kept = []
        for image in images:
            winner = chosen[self._found[image.relpath][0]]
            if winner is image:
                kept.append(image)
            else:
                self.notes.append(f"{image.relpath} (the same file as {winner.relpath}; counted once)")
        return kept

    def _link_allowed(self, link: Path, relpath: str) -> bool:
        """Links inside the data folder are followed; links leading outside only with `follow_links`."""
        if self.follow_links:
            return True
        target = Path(os.path.realpath(link))
        if target == self.root or self.root in target.parents:
            return True
        self.notes.append(
            f"{relpath} (symbolic link leading outside the data folder; not followed: use --follow-links)"
        )
        return False


def _key(stat: os.stat_result) -> FileKey:
    return stat.st_dev, stat.st_ino


def _discover_label_file(
    path: Path,
    split_fractions: tuple[float, float, float] | None,
    *,
    label_sep: str,
    task: LabelTask,
    follow_links: bool,
) -> DataSource:
    """The images a label file lists, split as the file says, else by path hash like a class folder.

    Rows without a split are assigned by their path hash (`AUTO_SPLIT`, or `split_fractions`); when no row ends
    up in val, validation is carved out of train by the same hash, as for a pre-split folder without `val/`.
    The classes are every label any row gives.
    """
    rows, problems = _usable_rows(path, label_sep=label_sep, task=task, follow_links=follow_links)
    images, fractions = _split_rows(rows, split_fractions)
    return DataSource(path.resolve().parent, "label_file", _classes(images), images, [], fractions, path, problems)


def _split_rows(
    rows: list[LabelRow], split_fractions: tuple[float, float, float] | None
) -> tuple[list[LabelledImage], tuple[float, float, float]]:
    """Labelled images of rows (of a label file or shards): the given split, else the path hash; validation
    carved out of train by the same hash when no row is in val."""
    fractions = check_split_fractions(split_fractions or AUTO_SPLIT)
    images = [_labelled(row, row.split or assign_split(row.relpath, fractions)) for row in rows]
    if not any(image.split == "val" for image in images):
        carve = check_split_fractions((fractions[0], fractions[1], 0.0))
        images = [
            _with_split(image, assign_split(image.relpath, carve)) if image.split == "train" else image
            for image in images
        ]
    return images, fractions


def _label_file_for_evaluation(
    path: Path,
    split: str | None,
    fractions: tuple[float, float, float],
    *,
    label_sep: str,
    task: LabelTask,
    follow_links: bool,
) -> tuple[DataSource, str]:
    """Evaluation images of a label file: its test (else val) rows when it gives splits, else all rows."""
    rows, problems = _usable_rows(path, label_sep=label_sep, task=task, follow_links=follow_links)
    images, chosen = _evaluation_images(rows, split, fractions, path)
    return DataSource(path.resolve().parent, "label_file", _classes(images), images, [], None, path, problems), chosen


def _evaluation_images(
    rows: list[LabelRow], split: str | None, fractions: tuple[float, float, float], where: Path
) -> tuple[list[LabelledImage], str]:
    """The rows' images in the split to evaluate on (their test, else val rows when splits are given, else all)."""
    given = [name for name in SPLITS if any(row.split == name for row in rows)]
    chosen = split or ("test" if "test" in given else "val" if "val" in given else "all")
    if chosen not in (*SPLITS, "all"):
        raise DataError(f"unknown split {split!r}; expected one of all, train, val, test")
    if chosen != "all" and not given:
        rows = [dataclasses.replace(row, split=assign_split(row.relpath, fractions)) for row in rows]
    images = [_labelled(row, "all" if chosen == "all" else row.split or "train") for row in rows]
    images = [image for image in images if image.split == chosen]
    if not images:
        raise DataError(f"{where}: split {chosen!r} holds no images")
    return images, chosen


def _classes(images: list[LabelledImage]) -> list[str]:
    return sorted({label for image in images for label in image.labels})


def _usable_rows(
    path: Path, *, label_sep: str, task: LabelTask, follow_links: bool
) -> tuple[list[LabelRow], list[str]]:
    rows, problems = read_label_file(path, label_sep=label_sep, task=task, follow_links=follow_links)
    if not rows:
        first = f"; the first: {problems[0]}" if problems else ""
        raise DataError(f"{path}: no usable rows ({len(problems)} left out{first})")
    return rows, problems


def _labelled(row: LabelRow, split: str) -> LabelledImage:
    return LabelledImage(
        path=row.path, relpath=row.relpath, label=row.labels[0], split=split, extra_labels=row.labels[1:]
    )


def _with_split(image: LabelledImage, split: str) -> LabelledImage:
    return dataclasses.replace(image, split=split)


def _only_split(source: DataSource, split: str) -> DataSource:
    return dataclasses.replace(source, images=[image for image in source.images if image.split == split])


def _check_classes(source: DataSource, walk: _Walk) -> None:
    where = source.root / "train" if source.layout == "pre_split" else source.root
    links = sum("symbolic link" in note for note in walk.notes)
    hint = f" ({links} symbolic link(s) were not followed; see --follow-links)" if links else ""
    if len(source.classes) < 2:
        found = f"only {source.classes[0]!r}" if source.classes else "none"
        if source.label_file is not None or source.layout == "shards":
            raise DataError(f"{source.label_file or source.root}: need at least two labels, found {found}")
        raise DataError(
            f"{where}: need at least two class folders, found {found}{hint}. Expected {where}/<class>/*.jpg"
        )
    per_class = Counter(label for image in source.images if image.split == "train" for label in image.labels)
    for name in source.classes:
        if per_class.get(name, 0) == 0:
            total = sum(1 for image in source.images if name in image.labels)
            if total == 0:
                raise DataError(
                    f"{where / name}: class {name!r} has no images (supported: jpg, png, bmp, gif, webp, tif){hint}"
                )
            raise DataError(
                f"{where / name}: class {name!r} has {total} image(s) but none landed in the training split; "
                "add images or use pre-split train/val folders"
            )
