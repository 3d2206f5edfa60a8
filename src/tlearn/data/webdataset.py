"""WebDataset tar shards as labelled images: `tlearn train shards/` on a folder of `*.tar` files.

Three ways to give shards:

* a folder holding `*.tar` shards and no sub-folder: every image's split comes from the hash of its path
  relative to the folder (`shard-000000.tar/0001.jpg`), as for a folder of classes;
* a folder holding `train/`, optionally `val/` and `test/`, each holding shards: the user's own split (without
  `val/`, validation is carved out of train by the same hash);
* the path of one `.tar` file: its images are split by hash, with paths relative to the file's folder.

Inside a shard, members are grouped into samples by key, as WebDataset does: the member's name up to the first
dot of its file name (`0001.jpg`, `0001.cls` and `0001.json` are the sample `0001`). A sample's image is its
first member with an image extension; its label is the text of `KEY.cls` (a class name; an integer is a class
name too), else the `"label"`, `"labels"` or `"cls"` value of `KEY.json`, where a list gives several labels
(multi-label data, as in a label file). Other members (`KEY.txt`, ...) are not read. An image without a label,
a label member that cannot be read, a sample without an image and a member that is never read (links, `..`
names; see `tlearn.data.shards`) each become one line of the data source's ignored files, with the reason.

Nothing is unpacked: images are read from the shards by offset when they are embedded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlearn.data.images import is_hidden_name, is_image_name
from tlearn.data.label_files import LabelRow, LabelTask
from tlearn.data.shards import Member, ShardIndex, index_shard, is_shard_name, read_members
from tlearn.errors import DataError

SPLIT_FOLDERS = ("train", "val", "test")
LABEL_MEMBERS = ("cls", "json")  # in the order they are asked for a sample's label
MAX_LABEL_BYTES = 65_536  # a label member larger than this is not a label
JSON_LABEL_KEYS = ("label", "labels", "cls")


@dataclass(frozen=True)
class ShardSet:
    """The shards a data path gives, each with its split (None: split by path hash), before any is opened."""

    root: Path  # what relative paths are relative to: the folder, or the folder holding a single `.tar` file
    shards: tuple[tuple[str | None, Path], ...]
    ignored: tuple[str, ...] = ()  # entries beside the shards, relative to root


def find_shards(path: str | Path, *, follow_links: bool = False) -> ShardSet | None:
    """The shards at `path`, or None when it is neither a `.tar` file nor a folder of shards (or of
    `train/`, `val/`, `test/` folders of shards). Folders holding class sub-folders are never shard folders.

    A shard that is a symbolic link leading outside the folder is skipped and listed unless `follow_links`.

    Example:
        >>> find_shards("shards/").shards[:1]  # doctest: +SKIP
        ((None, PosixPath('/data/shards/shard-000000.tar')),)
    """
    path = Path(path).expanduser()
    if is_shard_name(path) and path.is_file():
        shard = path.resolve()
        return ShardSet(shard.parent, ((None, shard),))
    if not path.is_dir():
        return None
    root = path.resolve()
    top = _Entries.scan(root, root, follow_links)
    if top.shards and not top.folders:
        return ShardSet(root, tuple((None, shard) for shard in top.shards), tuple(top.others))
    names = [folder.name for folder in top.folders]
    if top.shards or "train" not in names or not set(names) <= set(SPLIT_FOLDERS):
        return None
    found: list[tuple[str | None, Path]] = []
    ignored = list(top.others)
    for split in [name for name in SPLIT_FOLDERS if name in names]:
        inner = _Entries.scan(root / split, root, follow_links)
        if split == "train" and (inner.folders or not inner.shards):
            return None  # train/<class>/...: a pre-split folder of classes
        found += [(split, shard) for shard in inner.shards]
        ignored += [f"{split}/{entry}" for entry in inner.others + [folder.name for folder in inner.folders]]
    return ShardSet(root, tuple(found), tuple(ignored))


def read_shard_rows(shards: ShardSet, *, task: LabelTask = "auto") -> tuple[list[LabelRow], list[str]]:
    """The labelled images of the shards, in shard order, and one "relpath (reason)" line per member left out.

    Args:
        shards: what `find_shards` found.
        task: "multiclass" leaves out (and lists) every image with several labels.

    Raises:
        DataError: a shard cannot be read (`ShardError`, one line naming it), or no image has a label.
    """
    rows: list[LabelRow] = []
    ignored = list(shards.ignored)
    for split, shard in shards.shards:
        index = index_shard(shard)
        prefix = shard.relative_to(shards.root).as_posix()
        labelled, left_out = _labelled_samples(index, task)
        ignored += [f"{prefix}/{line}" for line in (*index.refused, *left_out)]
        rows += [LabelRow(shard / image.name, f"{prefix}/{image.name}", labels, split) for image, labels in labelled]
    if not rows:
        first = f"; the first: {ignored[0]}" if ignored else ""
        raise DataError(
            f"{shards.root}: no labelled image in {len(shards.shards)} shard(s) ({len(ignored)} left out{first}). "
            "Expected KEY.jpg with KEY.cls (the class) in each shard"
        )
    return rows, ignored


def shard_images(path: str | Path) -> list[Path]:
    """Every image member (as a path inside its shard) of the shards at `path`; [] when there are none.

    Raises:
        ShardError: a shard cannot be read.
    """
    found = find_shards(path, follow_links=True)
    if found is None:
        return []
    return [
        shard / member.name
        for _, shard in found.shards
        for member in index_shard(shard).members.values()
        if _is_image_member(member)
    ]


@dataclass
class _Entries:
    """One folder's visible entries: shards, sub-folders and the names of anything else."""

    shards: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    others: list[str] = field(default_factory=list)

    @classmethod
    def scan(cls, folder: Path, root: Path, follow_links: bool) -> _Entries:
        entries = cls()
        for entry in sorted(folder.iterdir(), key=lambda item: item.name):
            relpath = entry.relative_to(root).as_posix()
            if is_hidden_name(entry.name):
                continue
            if entry.is_symlink() and not follow_links and not entry.resolve().is_relative_to(root):
                entries.others.append(f"{relpath} (symbolic link leading outside the data folder; not followed)")
            elif entry.is_dir():
                entries.folders.append(entry)
            elif is_shard_name(entry.name) and entry.is_file():
                entries.shards.append(entry)
            else:
                entries.others.append(relpath)
        return entries


@dataclass
class _Sample:
    """The members of one WebDataset sample (one key)."""

    key: str
    images: list[Member] = field(default_factory=list)
    labels: dict[str, Member] = field(default_factory=dict)  # "cls" / "json" → member


def _labelled_samples(index: ShardIndex, task: LabelTask) -> tuple[list[tuple[Member, tuple[str, ...]]], list[str]]:
    """(image, labels) of each labelled sample of a shard, and "name (reason)" for each member left out, in the
    shard's order."""
    one_label = task == "multiclass"  # the user's --task, as label files read it (`LabelTask`)
    samples = _samples(index)
    chosen = {sample.key: _label_member(sample) for sample in samples if sample.images}
    wanted = [member for member in chosen.values() if member is not None and member.size <= MAX_LABEL_BYTES]
    contents = dict(zip([member.name for member in wanted], read_members(index, wanted), strict=True))
    labelled, left_out = [], []
    for sample in samples:
        if not sample.images:
            left_out.append(f"{sample.key} (no image member)")
            continue
        image, *others = sample.images
        labels, problem = _labels(sample, chosen[sample.key], contents)
        if problem is None and one_label and len(labels) > 1:
            problem = f"several labels ({', '.join(labels)}) but --task multiclass takes one per image"
        if problem is None:
            labelled.append((image, labels))
        else:
            left_out.append(f"{image.name} ({problem}; image left out)")
        left_out += [
            f"{other.name} (another image of sample {sample.key}; only {image.name} is read)" for other in others
        ]
    return labelled, left_out


def _samples(index: ShardIndex) -> list[_Sample]:
    """The shard's members grouped by key (up to the first dot of the file name), in the order first seen."""
    samples: dict[str, _Sample] = {}
    for member in index.members.values():
        folder, _, name = member.name.rpartition("/")
        stem, dot, extension = name.partition(".")
        if is_hidden_name(name) or not dot:
            continue
        key = f"{folder}/{stem}" if folder else stem
        sample = samples.setdefault(key, _Sample(key))
        if _is_image_member(member):
            sample.images.append(member)
        elif extension.lower() in LABEL_MEMBERS:
            sample.labels[extension.lower()] = member
    return list(samples.values())


def _label_member(sample: _Sample) -> Member | None:
    return next((sample.labels[kind] for kind in LABEL_MEMBERS if kind in sample.labels), None)


def _labels(sample: _Sample, member: Member | None, contents: dict[str, bytes]) -> tuple[tuple[str, ...], str | None]:
    """(labels, None) from the sample's label member, or ((), why there is no usable label)."""
    if member is None:
        return (), f"no label: neither {sample.key}.cls nor {sample.key}.json"
    if member.name not in contents:
        return (), f"label member {member.name} of {member.size:,} bytes (a label takes at most {MAX_LABEL_BYTES:,})"
    try:
        text = contents[member.name].decode("utf-8-sig")
    except UnicodeDecodeError:
        return (), f"label member {member.name} is not UTF-8 text"
    if member.name.lower().endswith(".cls"):
        value: Any = text.strip()
    else:
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            return (), f"{member.name}: not valid JSON ({error.msg})"
        key = next((key for key in JSON_LABEL_KEYS if isinstance(record, dict) and key in record), None)
        if key is None:
            return (), f"no label: {member.name} has no {', '.join(repr(key) for key in JSON_LABEL_KEYS)} key"
        value = record[key]
    if isinstance(value, str) and not value.strip():
        return (), f"empty label in {member.name}"
    labels = _label_values(value)
    if labels is None:
        return (), f"{member.name}: the label must be a class name, an integer or a list of them, got {value!r:.60}"
    return labels, None


def _label_values(value: Any) -> tuple[str, ...] | None:
    """The labels a `.cls` text or a JSON value gives (several for a list); None when it gives none."""
    values = value if isinstance(value, list) else [value]
    labels = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int):
            return None
        label = str(item).strip()
        if not label:
            return None
        labels.append(label)
    return tuple(dict.fromkeys(labels)) or None


def _is_image_member(member: Member) -> bool:
    name = member.name.rpartition("/")[2]
    return is_image_name(name) and not is_hidden_name(name)
