"""WebDataset tar shards as data: labels and splits found in them, members read by offset (the original bytes,
nothing unpacked), unsafe members never read, damaged shards refused in one line, rewritten shards read anew."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from helpers import colour_image, run_cli
from tlearn.backbones.cache import FileIndex
from tlearn.data import shards as shards_module
from tlearn.data.discovery import AUTO_SPLIT, assign_split, discover, discover_for_evaluation, list_image_files
from tlearn.data.images import ImageDecodeError, ImageTooLargeError, load_rgb, read_file_bytes
from tlearn.data.shards import index_shard
from tlearn.errors import DataError

Entry = tuple[str, bytes] | tarfile.TarInfo  # (name, bytes) of a regular member, or a special member's header


def picture(seed: int) -> bytes:
    buffer = io.BytesIO()
    colour_image((40 + 7 * seed % 200, 90, 160), size=24, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, entries: list[Entry]) -> Path:
    """A tar file holding `entries` in order, as WebDataset's writer (and tarfile) writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                archive.addfile(entry)
                continue
            name, payload = entry
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def samples(labels: dict[str, str], *, seed: int = 0) -> list[Entry]:
    """KEY.png + KEY.cls for each key → label."""
    entries: list[Entry] = []
    for number, (key, label) in enumerate(labels.items()):
        entries += [(f"{key}.png", picture(seed + number)), (f"{key}.cls", label.encode())]
    return entries


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in root.rglob("*") if path.is_file()}


@pytest.fixture
def shard_folder(tmp_path) -> Path:
    """Two shards of ants and bees, 12 samples each."""
    folder = tmp_path / "shards"
    for number in range(2):
        labels = {f"{number}{n:03d}": ("ants" if n % 2 else "bees") for n in range(12)}
        write_shard(folder / f"shard-{number:06d}.tar", samples(labels, seed=100 * number))
    return folder


def test_a_folder_of_shards_is_split_by_the_hash_of_each_member_path(shard_folder):
    source = discover(shard_folder)
    assert source.layout == "shards" and source.classes == ["ants", "bees"] and source.ignored == []
    assert source.root == shard_folder.resolve() and len(source.images) == 24
    first = source.images[0]
    assert first.relpath == "shard-000000.tar/0000.png" and first.label == "bees"
    assert first.path == shard_folder.resolve() / "shard-000000.tar" / "0000.png"
    for image in source.images:
        assert image.split == assign_split(image.relpath, AUTO_SPLIT)
    assert {image.split for image in source.images} == {"train", "val", "test"}
    evaluated, split = discover_for_evaluation(shard_folder)
    assert split == "all" and len(evaluated.images) == 24
    _, test = discover_for_evaluation(shard_folder, split="test")
    assert test == "test"


def test_labels_come_from_cls_text_integers_and_json(tmp_path):
    shard = write_shard(
        tmp_path / "data" / "labels.tar",
        [
            ("a.png", picture(1)),
            ("a.cls", b" 3\n"),  # an integer is a class name
            ("b.png", picture(2)),
            ("b.json", json.dumps({"label": "cat"}).encode()),
            ("c.png", picture(3)),
            ("c.json", json.dumps({"labels": ["cat", "dog", "cat"]}).encode()),
            ("d.png", picture(4)),
            ("d.json", json.dumps({"cls": 7, "caption": "x"}).encode()),
            ("e.png", picture(5)),
            ("e.cls", b"dog"),
            ("e.json", json.dumps({"label": "cat"}).encode()),  # .cls is asked first
            ("e.txt", b"a caption, never read as a label"),
        ],
    )
    source, _ = discover_for_evaluation(shard)  # every image, whatever its split
    labels = {image.relpath: image.labels for image in source.images}
    assert labels == {
        "labels.tar/a.png": ("3",),
        "labels.tar/b.png": ("cat",),
        "labels.tar/c.png": ("cat", "dog"),
        "labels.tar/d.png": ("7",),
        "labels.tar/e.png": ("dog",),
    }
    assert (
        source.root == shard.parent.resolve() and source.has_label_sets and source.classes == ["3", "7", "cat", "dog"]
    )
    single, _ = discover_for_evaluation(shard, task="multiclass")
    assert "labels.tar/c.png" not in {image.relpath for image in single.images}
    assert single.ignored == [
        "labels.tar/c.png (several labels (cat, dog) but --task multiclass takes one per image; image left out)"
    ]


def test_train_val_test_folders_of_shards_keep_their_split(tmp_path):
    data = tmp_path / "data"
    write_shard(data / "train" / "train-0.tar", samples({f"t{n}": "ab"[n % 2] for n in range(8)}))
    write_shard(data / "val" / "val-0.tar", samples({f"v{n}": "ab"[n % 2] for n in range(4)}, seed=50))
    write_shard(data / "test" / "test-0.tar", samples({f"s{n}": "ab"[n % 2] for n in range(4)}, seed=80))
    source = discover(data)
    splits = {image.relpath: image.split for image in source.images}
    assert sum(split == "train" for split in splits.values()) == 8 and splits["val/val-0.tar/v0.png"] == "val"
    assert all(split == relpath.split("/")[0] for relpath, split in splits.items())
    evaluated, split = discover_for_evaluation(data)
    assert split == "test" and {image.relpath for image in evaluated.images} == {
        f"test/test-0.tar/s{n}.png" for n in range(4)
    }
    # Without val/, validation is carved out of train by the path hash.
    for shard in (data / "val").iterdir():
        shard.unlink()
    (data / "val").rmdir()
    carved = discover(data, split_fractions=(1, 1, 0))
    train = [image for image in carved.images if image.relpath.startswith("train/")]
    assert {image.split for image in train} == {"train", "val"}


def test_member_bytes_are_the_original_bytes_and_nothing_is_unpacked(shard_folder, tmp_path):
    originals = {f"0{n:03d}.png": picture(n) for n in range(12)}
    before = files_under(tmp_path)
    source = discover(shard_folder)
    read = {image.relpath.split("/")[1]: read_file_bytes(image.path) for image in source.images[:12]}
    assert read == originals
    assert load_rgb(source.images[0].path).size == (24, 24)
    states, errors = FileIndex.stat([image.path for image in source.images])
    assert not errors and all(state is not None for state in states)
    assert len(list_image_files([shard_folder])) == 24
    assert files_under(tmp_path) == before  # not a byte written, not a shard touched


def test_members_without_a_label_are_listed_with_the_reason(tmp_path):
    shard = write_shard(
        tmp_path / "data" / "s.tar",
        [
            *samples({"a": "x", "b": "y"}),
            ("nolabel.png", picture(7)),
            ("badjson.png", picture(8)),
            ("badjson.json", json.dumps({"caption": "no label here"}).encode()),
            ("empty.png", picture(9)),
            ("empty.cls", b"  \n"),
            ("onlylabel.cls", b"x"),
            ("twice.png", picture(10)),
            ("twice.jpg", picture(11)),
            ("twice.cls", b"y"),
        ],
    )
    source = discover(shard, split_fractions=(1, 1, 0))
    assert sorted(image.relpath for image in source.images) == ["s.tar/a.png", "s.tar/b.png", "s.tar/twice.png"]
    assert source.ignored == [
        "s.tar/nolabel.png (no label: neither nolabel.cls nor nolabel.json; image left out)",
        "s.tar/badjson.png (no label: badjson.json has no 'label', 'labels', 'cls' key; image left out)",
        "s.tar/empty.png (empty label in empty.cls; image left out)",
        "s.tar/onlylabel (no image member)",
        "s.tar/twice.jpg (another image of sample twice; only twice.png is read)",
    ]


def test_links_traversal_and_special_members_are_never_read(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(picture(99))
    shard = write_shard(
        tmp_path / "data" / "s.tar",
        [
            *samples({"a": "x", "b": "y"}),
            ("../evil.png", picture(5)),
            ("../evil.cls", b"x"),
            ("/abs.png", picture(6)),
            ("/abs.cls", b"x"),
            special("link.png", tarfile.SYMTYPE, str(outside)),
            ("link.cls", b"x"),
            special("hard.png", tarfile.LNKTYPE, "a.png"),
            ("hard.cls", b"y"),
            special("fifo.png", tarfile.FIFOTYPE),
            ("fifo.cls", b"y"),
            special("folder", tarfile.DIRTYPE),
        ],
    )
    source = discover(shard, split_fractions=(1, 1, 0))
    assert sorted(image.relpath for image in source.images) == ["s.tar/a.png", "s.tar/b.png"]
    refused = [line for line in source.ignored if not line.endswith("(no image member)")]
    assert refused == [
        "s.tar/../evil.png (member name with '..': never read)",
        "s.tar/../evil.cls (member name with '..': never read)",
        "s.tar//abs.png (absolute member name: never read)",
        "s.tar//abs.cls (absolute member name: never read)",
        f"s.tar/link.png (link to {outside}: links in shards are never followed)",
        "s.tar/hard.png (link to a.png: links in shards are never followed)",
        "s.tar/fifo.png (not a regular file (device, FIFO or other special member))",
    ]
    for name in ("link.png", "hard.png", "../evil.png", "fifo.png"):
        with pytest.raises(ImageDecodeError, match="no member"):
            read_file_bytes(shard / name)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "data" / "link.png").exists()


def _last_member(content: bytes) -> tarfile.TarInfo:
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        return archive.getmembers()[-1]


def _cut_in_data(content: bytes) -> bytes:
    last = _last_member(content)
    return content[: last.offset_data + last.size // 2]


def _cut_at_member_end(content: bytes) -> bytes:
    last = _last_member(content)
    return content[: last.offset_data + -(-last.size // 512) * 512]  # every member whole, no end-of-archive blocks


def _cut_in_header(content: bytes) -> bytes:
    return content[: _last_member(content).offset + 200]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_cut_in_data, "truncated (member"),
        (_cut_at_member_end, "no end-of-archive marker"),
        (_cut_in_header, "no end-of-archive marker"),
        (gzip.compress, "not an uncompressed tar file"),
        (lambda content: b"", "empty file"),
    ],
)
def test_a_damaged_shard_is_a_one_line_error_naming_it(shard_folder, damage, reason):
    shard = shard_folder / "shard-000001.tar"
    intact = shard.read_bytes()
    member = discover(shard_folder).images[-1].path
    shard.write_bytes(damage(intact))
    with pytest.raises(DataError) as refused:
        discover(shard_folder)
    message = str(refused.value)
    assert message.startswith(f"{shard}: ") and reason in message and "\n" not in message
    with pytest.raises(ImageDecodeError) as unreadable:
        read_file_bytes(member)  # a worker reading a member of a shard damaged since discovery
    assert str(unreadable.value).startswith(f"{shard}: ") and "\n" not in str(unreadable.value)


def test_the_cli_names_a_truncated_shard_in_one_line(shard_folder, tmp_path, capsys):
    shard = shard_folder / "shard-000000.tar"
    shard.write_bytes(_cut_in_data(shard.read_bytes()))
    code, _, err = run_cli(capsys, "train", shard_folder, "--out", tmp_path / "run", "--mode", "linear")
    assert code == 2 and err.strip().count("\n") == 0 and str(shard) in err and "truncated" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_rewritten_shard_is_indexed_again(shard_folder, tmp_path):
    shard = shard_folder / "shard-000000.tar"
    member = shard / "0000.png"
    assert read_file_bytes(member) == picture(0)
    assert index_shard(shard) is index_shard(shard)  # indexed once per process while unchanged
    # Replaced by a new file (a new inode): the member moved and holds other bytes.
    replacement = write_shard(tmp_path / "new.tar", [("0000.txt", b"caption"), ("0000.png", picture(500))])
    os.replace(replacement, shard)
    assert read_file_bytes(member) == picture(500)
    # Rewritten in place (the same inode).
    with open(shard, "r+b") as handle:
        handle.truncate(0)
        handle.write(write_shard(tmp_path / "again.tar", [("0000.png", picture(501))]).read_bytes())
    assert read_file_bytes(member) == picture(501)


def test_the_file_index_trusts_an_unchanged_shard_only(tmp_path):
    """A member's state is its shard's identity and times with its own size: a shard rewritten with a member of
    the same name, size and offset is still hashed again."""
    shard = write_shard(tmp_path / "data" / "s.tar", [("blob.png", b"A" * 600)])
    member = shard / "blob.png"
    index = FileIndex(tmp_path / "cache")

    def record() -> None:
        (state,), _ = index.stat([member])
        assert index.record(dataclasses.replace(state, seen_ns=state.seen_ns + 10**10), "ab" * 32)

    record()
    assert index.lookup(index.stat([member])[0]) == ["ab" * 32]  # unchanged: the recorded hash is trusted
    os.replace(write_shard(tmp_path / "new.tar", [("blob.png", b"B" * 600)]), shard)  # a new inode
    assert index.lookup(index.stat([member])[0]) == [None]
    record()
    mtime_ns = shard.stat().st_mtime_ns
    with open(shard, "r+b") as handle:  # the same inode and size, written a second later
        handle.seek(512)
        handle.write(b"C" * 600)
    os.utime(shard, ns=(mtime_ns + 10**9, mtime_ns + 10**9))
    assert read_file_bytes(member) == b"C" * 600
    assert index.lookup(index.stat([member])[0]) == [None]
    index.close()


def test_a_member_over_the_byte_limit_is_refused_like_a_file(shard_folder, tmp_path):
    member = shard_folder / "shard-000000.tar" / "0000.png"
    size = len(picture(0))
    loose = tmp_path / "loose.png"
    loose.write_bytes(picture(0))
    with pytest.raises(ImageTooLargeError) as refused:
        read_file_bytes(member, max_bytes=size - 1)
    with pytest.raises(ImageTooLargeError) as file_refused:
        read_file_bytes(loose, max_bytes=size - 1)
    assert (
        str(refused.value)
        == str(file_refused.value)
        == (f"file of {size:,} bytes: larger than any image tlearn reads (limit {size - 1:,} bytes)")
    )
    assert read_file_bytes(member, max_bytes=size) == picture(0)


def test_predict_lists_the_images_of_shards(shard_folder):
    shard = shard_folder / "shard-000001.tar"
    assert list_image_files([shard]) == [shard.resolve() / f"1{n:03d}.png" for n in range(12)]
    assert len(list_image_files([shard_folder])) == 24


def test_a_missing_member_or_a_path_under_a_plain_file_is_unreadable(shard_folder, tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    states, errors = FileIndex.stat([shard_folder / "shard-000000.tar" / "gone.png", tmp_path / "a.png" / "b.png"])
    assert states == [None, None]
    assert errors[0] == f"cannot read file (no member gone.png in the shard {shard_folder / 'shard-000000.tar'})"
    assert errors[1] == "cannot read file (Not a directory)"
    with pytest.raises(ImageDecodeError, match=r"^cannot read file \(Not a directory\)$"):
        read_file_bytes(tmp_path / "a.png" / "b.png")


def test_class_folders_beside_a_stray_tar_are_not_shards(tmp_path):
    data = tmp_path / "data"
    for name, seed in (("ants", 1), ("bees", 2)):
        (data / name).mkdir(parents=True)
        (data / name / "1.png").write_bytes(picture(seed))
        (data / name / "2.png").write_bytes(picture(seed + 10))
    write_shard(data / "backup.tar", samples({"a": "x"}))
    source = discover(data, split_fractions=(1, 1, 0))
    assert source.layout == "class_folders" and source.ignored == ["backup.tar"]


@pytest.fixture(autouse=True)
def fresh_indexes(monkeypatch):
    """Each test starts without the shard indexes of earlier tests (the same paths are reused under tmp_path)."""
    monkeypatch.setattr(shards_module, "_indexes", type(shards_module._indexes)())
