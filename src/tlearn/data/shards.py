"""Reading the members of tar files (WebDataset shards) in place, without unpacking anything.

A member is addressed by a virtual path: the shard's path followed by the member's name,
`/data/shards/train-000.tar/0001.jpg`. Every reader of image bytes goes through
`tlearn.data.images.read_file_bytes`, which opens the path as a file; when the operating system answers "not a
directory" because an ancestor of the path is a regular `.tar` file, this module says where the member lies. A
tar file stores each member's bytes in one piece, so reading a member is one seek and one read of exactly its
size (`TarInfo.offset_data`, `TarInfo.size`). Nothing is ever extracted or written.

Each process keeps an index of the shards it has read (member name → offset, size), built by reading the tar
headers only (tarfile seeks over the data) and keyed by the shard's path and stat (device, inode, size,
mtime, ctime): a rewritten shard is indexed again, an unchanged one never is, and each decoding worker indexes a
shard once. The file index of the embedding cache asks `stat_path` for a member's state: the shard's stat with
the member's size, so a warm run reads no byte of an unchanged shard and a rewritten shard is hashed again.

Only regular members with plain relative names are indexed. A name that is absolute or has a `..` component,
links (symbolic and hard), devices, FIFOs and sparse members are never read and are listed with a reason in
`ShardIndex.refused`; directory entries are skipped. A shard that is not an uncompressed tar file, or is cut
short (a member's data runs past the end of the file, or the end-of-archive blocks are missing), is a
`ShardError` naming the shard and the reason in one line.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from tlearn.errors import DataError

SHARD_SUFFIX = ".tar"
# Shard indexes a process keeps: a worker reads a batch's members from a few shards at a time, and one index of
# 10,000 members takes about 2 MB.
MAX_INDEXED_SHARDS = 32
_BLOCK = tarfile.BLOCKSIZE

Signature = tuple[int, int, int, int, int]  # (device, inode, size, mtime_ns, ctime_ns) of the shard file


class ShardError(DataError):
    """A tar shard cannot be read: not an uncompressed tar file, truncated or corrupt. The message names it."""


@dataclass(frozen=True)
class Member:
    """One regular member of a shard: where its bytes start in the shard and how many there are."""

    name: str  # relative, '/'-separated, without `.` components
    offset: int
    size: int


@dataclass(frozen=True)
class ShardIndex:
    """The members of one shard as it was when indexed (`signature`), in the order the shard holds them."""

    path: Path
    signature: Signature
    members: dict[str, Member]
    refused: tuple[str, ...] = ()  # "name (reason)" for each member that is never read

    def member(self, name: str) -> Member:
        """The member called `name`.

        Raises:
            FileNotFoundError: the shard holds no such (readable) member; its message names the shard.
        """
        found = self.members.get(name)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, f"no member {name} in the shard {self.path}")
        return found


class MemberStat(NamedTuple):
    """What `os.stat` says about a file, for a shard member: the shard's identity and times, the member's size."""

    st_dev: int
    st_ino: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int


def is_shard_name(path: str | Path) -> bool:
    """Whether the name ends in `.tar` (any case): the only suffix read as a shard."""
    return Path(path).suffix.lower() == SHARD_SUFFIX


def split_member_path(path: str | Path) -> tuple[Path, str] | None:
    """(shard, member name) when an ancestor of `path` is a regular `.tar` file; None otherwise.

    Example:
        >>> split_member_path("/data/shards/train-000.tar/0001.jpg")  # doctest: +SKIP
        (PosixPath('/data/shards/train-000.tar'), '0001.jpg')
    """
    path = Path(path)
    for parent in path.parents:
        if is_shard_name(parent) and _is_regular_file(parent):
            return parent, path.relative_to(parent).as_posix()
    return None


def index_shard(shard: str | Path) -> ShardIndex:
    """The index of a shard: this process's copy when the shard's stat is unchanged, else read anew.

    Raises:
        ShardError: the shard cannot be opened, is not an uncompressed tar file, or is truncated or corrupt.
    """
    try:
        known = _known(Path(shard), _signature(os.stat(shard)))
        if known is not None:
            return known
        with open(shard, "rb") as handle:
            return _indexed(Path(shard), handle)
    except OSError as error:
        raise ShardError(f"{shard}: cannot read the shard ({error.strerror or error})") from None


def stat_path(path: str | Path) -> os.stat_result | MemberStat:
    """`os.stat(path)`; for a member of a shard, the shard's device, inode and times with the member's size.

    Raises:
        OSError: no such file, or no such member in the shard (`FileNotFoundError`).
        ShardError: the shard holding the member cannot be read.
    """
    try:
        return os.stat(path)
    except NotADirectoryError:
        found = split_member_path(path)
        if found is None:
            raise
    shard, name = found
    index = index_shard(shard)
    device, inode, _, mtime_ns, ctime_ns = index.signature
    return MemberStat(device, inode, index.member(name).size, mtime_ns, ctime_ns)


def is_file_or_member(path: str | Path) -> bool:
    """Whether `path` is a regular file or a member of a readable shard (`Path.is_file` for either kind of
    image path a run records)."""
    try:
        info = stat_path(path)
    except (OSError, ShardError):
        return False
    return isinstance(info, MemberStat) or stat.S_ISREG(info.st_mode)


def open_member(path: str | Path) -> tuple[BinaryIO, Member] | None:
    """The shard opened at the first byte of the member `path` names, and the member; None when no ancestor
    of `path` is a shard. The caller closes the handle. The index is checked against the open file, so the
    offsets always belong to the bytes being read, even when the shard was rewritten a moment ago.

    Raises:
        OSError: the shard cannot be opened, or holds no such member (`FileNotFoundError`).
        ShardError: the shard is not an uncompressed tar file, or is truncated or corrupt.
    """
    found = split_member_path(path)
    if found is None:
        return None
    shard, name = found
    handle = open(shard, "rb")  # noqa: SIM115 (handed to the caller)
    try:
        member = _indexed(shard, handle).member(name)
        handle.seek(member.offset)
    except BaseException:
        handle.close()
        raise
    return handle, member


def read_members(index: ShardIndex, members: Sequence[Member]) -> list[bytes]:
    """The bytes of several (small) members of one shard, read through one open file.

    Raises:
        ShardError: the shard changed since it was indexed, cannot be read, or ends before a member does.
    """
    try:
        with open(index.path, "rb") as handle:
            if _signature(os.fstat(handle.fileno())) != index.signature:
                raise ShardError(f"{index.path}: the shard changed while it was being read; run again")
            contents = []
            for member in members:
                handle.seek(member.offset)
                content = handle.read(member.size)
                if len(content) != member.size:
                    raise ShardError(f"{index.path}: truncated (member {member.name} is cut short)")
                contents.append(content)
            return contents
    except OSError as error:
        raise ShardError(f"{index.path}: cannot read the shard ({error.strerror or error})") from None


# This process's shard indexes, least recently used first, by absolute path. A lock because report thumbnails
# read images from threads; it is replaced in a forked child, where another thread may have held it.
_indexes: OrderedDict[str, ShardIndex] = OrderedDict()
_lock = threading.Lock()


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock)


def _indexed(shard: Path, handle: BinaryIO) -> ShardIndex:
    """The index of the open shard, from this process's indexes when its stat is unchanged."""
    signature = _signature(os.fstat(handle.fileno()))
    known = _known(shard, signature)
    if known is not None:
        return known
    built = _build_index(shard, handle, signature)
    with _lock:
        key = os.path.abspath(shard)
        _indexes[key] = built
        _indexes.move_to_end(key)
        while len(_indexes) > MAX_INDEXED_SHARDS:
            _indexes.popitem(last=False)
    return built


def _known(shard: Path, signature: Signature) -> ShardIndex | None:
    """This process's index of the shard when it was built from a file with this stat; None otherwise."""
    key = os.path.abspath(shard)
    with _lock:
        known = _indexes.get(key)
        if known is None or known.signature != signature:
            return None
        _indexes.move_to_end(key)
        return known


def _build_index(shard: Path, handle: BinaryIO, signature: Signature) -> ShardIndex:
    """Read the shard's headers (seeking over the data) into an index; check that nothing is cut short."""
    size = signature[2]
    members: dict[str, Member] = {}
    refused: list[str] = []
    try:
        with tarfile.open(fileobj=handle, mode="r:") as archive:
            for info in archive:
                if info.offset_data + info.size > size and info.isreg():
                    raise ShardError(
                        f"{shard}: truncated (member {info.name} needs bytes up to {info.offset_data + info.size:,}; "
                        f"the file has {size:,})"
                    )
                name, reason = _checked(info)
                if name is None:
                    if reason:
                        refused.append(f"{info.name} ({reason})")
                    continue
                if name in members:
                    refused.append(f"{name} (given again later in the shard: the last copy is read)")
                members[name] = Member(name, info.offset_data, info.size)
            end = archive.offset  # where the header after the last member would start
    except tarfile.TarError as error:
        raise ShardError(f"{shard}: not an uncompressed tar file, or truncated or corrupt ({error})") from None
    handle.seek(end)
    if handle.read(_BLOCK) != bytes(_BLOCK):
        raise ShardError(
            f"{shard}: truncated or corrupt after byte {end:,} (no end-of-archive marker where the next header or "
            "the end should be)"
        )
    return ShardIndex(shard, signature, members, tuple(refused))


def _checked(info: tarfile.TarInfo) -> tuple[str | None, str]:
    """(the member's clean name, "") for a readable member; (None, why) for one that is never read ("" for a
    directory, which needs no mention)."""
    if info.isdir():
        return None, ""
    if info.issym() or info.islnk():
        return None, f"link to {info.linkname}: links in shards are never followed"
    if not info.isreg():
        return None, "not a regular file (device, FIFO or other special member)"
    if info.issparse():
        return None, "sparse member: not stored in one piece"
    if info.name.startswith("/"):
        return None, "absolute member name: never read"
    parts = [part for part in info.name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None, "member name with '..': never read"
    if not parts:
        return None, "empty member name"
    return "/".join(parts), ""


def _signature(info: os.stat_result) -> Signature:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
