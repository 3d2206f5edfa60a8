"""Creating, replacing and completing run folders without ever losing a user's file.

Every folder tlearn writes a run or an evaluation into carries a marker file (`.tlearn-run.json`) saying
what kind of folder it is, which outputs tlearn wrote there, and whether the run completed. The rules:

* `--out` may not be the data folder, lie inside it, or contain it (a run would mix with the images).
* Only a folder carrying tlearn's marker holds a run. A folder that holds files but no marker is not ours, however
  much it looks like a run (config.yaml, metrics.json, model/ and figures/ are other tools' names too): it is
  refused, `--overwrite` or not, and nothing in it is touched.
* `--overwrite` touches only the outputs the old marker lists. They are moved aside into `.tlearn-previous/`
  together with a copy of the old marker (one rename each), the new run writes, and only when it has completed
  are the old outputs deleted; if it fails they are put back. Other files in the folder (a user's notes) are
  never touched; one named like an output is refused.
* A run killed while it replaces another (`kill -9`, a power cut) cannot put the old one back itself: the next
  command that opens the folder (train, evaluate, predict, export, serve, compare, the report) does, deleting
  only what the killed run wrote. A command that is still writing holds a lock on the folder (released by the
  kernel however the process ends), so a live run is never mistaken for a killed one; while it runs, commands
  that need the complete run are refused with the path of the kept copy.
* The marker's `complete` flag is written last. A run without it is resumable (`--resume`) or refused
  clearly; its model is never loaded for serving, export or prediction.
* An evaluation never writes into a training run's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from tlearn import __version__
from tlearn.errors import RunDirError
from tlearn.runs.layout import (
    AUDIT_OUTPUTS,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EVALUATION_OUTPUTS,
    RUN_OUTPUTS,
    SELECT_OUTPUTS,
)
from tlearn.util import atomic
from tlearn.util.wording import option

try:
    import fcntl
except ImportError:  # Windows: no flock (see `_FolderLock`)
    fcntl = None

MARKER_FILE = ".tlearn-run.json"
MARKER_FORMAT = "tlearn-run"
ASIDE_DIR = ".tlearn-previous"
FolderKind = Literal["train", "evaluate", "audit", "select"]
# What each kind of folder may hold; `tlearn audit` and `tlearn select` folders follow the same rules.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": RUN_OUTPUTS,
    "evaluate": EVALUATION_OUTPUTS,
    "audit": AUDIT_OUTPUTS,
    "select": SELECT_OUTPUTS,
}
_HOLDS = {
    "train": "a training run",
    "evaluate": "an evaluation",
    "audit": "a data audit",
    "select": "a backbone selection",
}


class RunFolderWarning(UserWarning):
    """A run folder was repaired on opening: the previous run that a killed `--overwrite` had set aside is back."""


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's tlearn marker, or None when there is none (an unreadable file, or one that is not tlearn's,
    counts as none)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or marker.get("kind") not in OUTPUTS:
        return None
    return marker


def is_incomplete_run(folder: Path) -> bool:
    """True when the folder's marker says a run started there and never completed."""
    marker = read_marker(folder)
    return marker is not None and not marker.get("complete", False)


def refuse_overlap(out: Path, data: Path | None, *, option: str = "--out") -> None:
    """Refuse an output folder that is the data folder, lies inside it or contains it.

    Raises:
        RunDirError: the two overlap.
    """
    if data is None:
        return
    out_resolved, data_resolved = out.expanduser().resolve(), data.expanduser().resolve()
    if out_resolved == data_resolved:
        raise RunDirError(f"{option} {out}: is the data folder itself; write the run elsewhere")
    if data_resolved in out_resolved.parents:
        raise RunDirError(
            f"{option} {out}: lies inside the data folder {data_resolved}; its files would be taken for images"
        )
    if out_resolved in data_resolved.parents:
        raise RunDirError(f"{option} {out}: contains the data folder {data_resolved}; write the run elsewhere")


def settle_interrupted(folder: Path) -> Path | None:
    """Before a command reads `folder`: put back the previous run that a killed `--overwrite` left set aside.

    A no-op (one `stat`) unless `folder/.tlearn-previous` exists. The run that replaced the previous one is
    deleted (only the outputs it wrote) when it never completed; when it did complete, the kept copy is.

    Args:
        folder: a run or evaluation folder.

    Returns:
        Where a previous run is still kept, because a command is writing `folder` right now (another one, or this
        one: a run reads its own folder for its report) or because the copy there is not one tlearn made;
        None when nothing is kept.

    Raises:
        RunDirError: the previous run could not be moved back (a file is in its way, or the file system refused).

    Example:
        >>> settle_interrupted(Path("runs/ants"))  # doctest: +SKIP
    """
    aside = folder / ASIDE_DIR
    if not os.path.lexists(aside):
        return None
    lock = _FolderLock.try_acquire(folder)
    if lock is None:
        return aside
    try:
        restored = _settle(folder)
    finally:
        lock.release()
    if restored:
        warnings.warn(_restored_message(folder), RunFolderWarning, stacklevel=2)
    return aside if os.path.lexists(aside) else None


class OutputFolder:
    """One run or evaluation being written: prepared on entry, marked complete or rolled back on exit.

    Example:
        >>> with OutputFolder.open(Path("runs/a"), kind="train", overwrite=True) as folder:  # doctest: +SKIP
        ...     write_everything(folder.root)
    """

    def __init__(self, root: Path, kind: FolderKind, *, replacing: bool, created: bool, resumed: bool = False) -> None:
        self.root = root
        self.kind = kind
        self._replacing = replacing  # a previous run waits in ASIDE_DIR until this one completes
        self._created = created  # the folder did not exist before
        self._resumed = resumed  # continuing an unfinished run: a failure leaves it unfinished, not removed

    @classmethod
    @contextmanager
    def open(
        cls,
        root: Path,
        *,
        kind: FolderKind,
        overwrite: bool = False,
        resume: bool = False,
        data: Path | None = None,
    ) -> Iterator[OutputFolder]:
        """Prepare `root` for a run of `kind`; mark it complete when the block succeeds, roll back if not.

        The folder is locked while the block runs, so a second command cannot write there at the same time, and
        a command that opens it meanwhile knows the run is alive (see `settle_interrupted`).

        Args:
            root: the folder (created if missing).
            kind: "train", "evaluate", "audit" or "select" (which outputs the folder may hold).
            overwrite: replace the outputs of a previous run of the same kind (moved aside until success).
            resume: continue the incomplete run in `root` (training only).
            data: the data folder, which `root` may not overlap.

        Raises:
            RunDirError: the folder is not usable for this run (see the module's rules).
        """
        root = root.expanduser()
        refuse_overlap(root, data)
        if os.path.lexists(root) and not root.is_dir():
            raise RunDirError(f"{root}: exists and is not a directory")
        if resume and not root.is_dir():
            raise RunDirError(f"{root}: no run to resume (no unfinished tlearn run here)")
        created = not root.is_dir()
        root.mkdir(parents=True, exist_ok=True)
        lock = _FolderLock.try_acquire(root)
        if lock is None:
            raise RunDirError(
                f"{root}: another tlearn command is writing there right now; let it finish or choose another "
                f"{option('out', '...')}"
            )
        try:
            try:
                folder = cls._prepare(root, kind, overwrite=overwrite, resume=resume, created=created)
            except BaseException:
                if created and not any(root.iterdir()):
                    root.rmdir()
                raise
            try:
                yield folder
            except BaseException:
                folder._roll_back()
                raise
            folder._complete()
        finally:
            lock.release()

    @classmethod
    def _prepare(cls, root: Path, kind: FolderKind, *, overwrite: bool, resume: bool, created: bool) -> OutputFolder:
        """Check the folder (locked by the caller) and set the previous run's outputs aside when replacing it."""
        if _settle(root):
            warnings.warn(_restored_message(root), RunFolderWarning, stacklevel=2)
        aside = root / ASIDE_DIR
        if os.path.lexists(aside):
            raise RunDirError(
                f"{aside}: holds files tlearn cannot put back (no tlearn marker there, or {root} lost its own); "
                f"move them back into {root} or away, then run again"
            )
        marker = read_marker(root)
        if marker is None and os.path.lexists(root / MARKER_FILE):
            raise RunDirError(
                f"{root / MARKER_FILE}: not a tlearn marker (unreadable, or written by another program); "
                f"choose an empty or new {option('out', '...')}"
            )
        outputs = OUTPUTS[kind]
        entries = sorted(path.name for path in root.iterdir())
        if resume:
            if marker is None or marker.get("kind") != "train" or not (root / CONFIG_FILE).is_file():
                raise RunDirError(f"{root}: no run to resume (no unfinished tlearn run here)")
            if marker.get("complete"):
                raise RunDirError(f"{root}: the run is already complete (nothing to resume)")
            return cls(root, kind, replacing=False, created=False, resumed=True)
        foreign = [name for name in entries if name != MARKER_FILE]
        if foreign and marker is None:
            raise RunDirError(
                f"{root}: holds files that tlearn did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}) and no {MARKER_FILE}; choose an empty or new "
                f"{option('out', '...')}"
            )
        if marker is not None and marker.get("kind") != kind:
            what = _HOLDS.get(marker.get("kind"), "another kind of tlearn output")
            raise RunDirError(f"{root}: holds {what}; write this {_HOLDS[kind].split(' ', 1)[1]} elsewhere")
        ours = _listed_outputs(marker) if marker else set()
        colliding = [name for name in foreign if name in outputs and name not in ours]
        if colliding:
            raise RunDirError(
                f"{root}: {', '.join(colliding[:3])} were not written by tlearn but this run would write them; "
                f"move them away or choose another {option('out', '...')}"
            )
        previous = [name for name in foreign if name in ours]
        if previous and not overwrite:
            unfinished = f"an unfinished run (continue it with {option('resume')})"
            state = unfinished if is_incomplete_run(root) else "a previous run"
            raise RunDirError(
                f"{root}: already holds {state}; pass {option('overwrite')} to replace it or choose another "
                f"{option('out', '...')}"
            )
        if previous:
            # The copy of the marker goes first: it is what makes the folder recognisably ours to whoever
            # finds it after a crash (`_settle`), and it says what to put back.
            aside.mkdir()
            atomic.write_bytes(aside / MARKER_FILE, (root / MARKER_FILE).read_bytes())
            for name in previous:
                (root / name).rename(aside / name)
        atomic.write_json(root / MARKER_FILE, _marker(kind, outputs=list(outputs), complete=False))
        return cls(root, kind, replacing=bool(previous), created=created)

    def _complete(self) -> None:
        """Record exactly what this run wrote, mark it complete (written last), then drop the old outputs."""
        outputs = OUTPUTS[self.kind]
        written = [name for name in outputs if (self.root / name).exists()]
        atomic.write_json(self.root / MARKER_FILE, _marker(self.kind, outputs=written, complete=True))
        if self._replacing:
            aside = self.root / ASIDE_DIR
            try:
                _discard_aside(aside)
            except OSError as error:  # the run is complete; the next command that opens the folder retries
                warnings.warn(
                    f"{aside}: the replaced run could not be deleted ({error}); the next command that opens "
                    f"{self.root} deletes it",
                    RunFolderWarning,
                    stacklevel=2,
                )

    def _roll_back(self) -> None:
        """After a failure: a run that replaced a previous one gives the folder back to it; a resumed run, and a
        fresh run that got as far as a checkpoint, stay (unfinished, resumable: a run killed before its first
        checkpoint, or a linear run, which writes none, is resumed from its config); anything else leaves the
        folder as it found it."""
        if self._replacing:
            _settle(self.root)
        elif self._resumed:
            return
        elif not (self.kind == "train" and any((self.root / CHECKPOINTS_DIR).glob("*/state.pt"))):
            _remove_outputs(self.root, self.kind)
            (self.root / MARKER_FILE).unlink(missing_ok=True)
            if self._created and not any(self.root.iterdir()):
                self.root.rmdir()


class _FolderLock:
    """An exclusive `flock` on a folder (on the directory itself, so no lock file is left behind).

    The kernel drops it when its holder exits, `kill -9` included: whoever gets it knows that no command is
    writing the folder. Child processes (decoding pools, data loaders) do not keep it: their copy of the
    descriptor is closed at fork. Where flock is missing (Windows, a network file system without locks) no lock
    is taken, and a folder is assumed to have no other writer.
    """

    _held: ClassVar[set[int]] = set()  # descriptors holding a lock in this process, closed in forked children

    def __init__(self, descriptor: int | None) -> None:
        self._descriptor = descriptor

    @classmethod
    def try_acquire(cls, folder: Path) -> _FolderLock | None:
        """The lock, or None when another open descriptor holds it (a command is writing the folder)."""
        if fcntl is None:
            return cls(None)
        try:
            descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:  # not readable: nothing can be put back or written there anyway; the next step says why
            return cls(None)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError:  # no flock on this file system
            os.close(descriptor)
            return cls(None)
        cls._held.add(descriptor)
        return cls(descriptor)

    def release(self) -> None:
        if self._descriptor is not None:
            self._held.discard(self._descriptor)
            os.close(self._descriptor)  # the last descriptor of the lock: the kernel drops it
            self._descriptor = None

    @classmethod
    def close_in_child(cls) -> None:
        """In a forked child: drop the inherited descriptors, so the lock ends with the process that took it."""
        for descriptor in cls._held:
            try:
                os.close(descriptor)
            except OSError:  # already closed by the child's own cleanup; nothing is held through it
                continue
        cls._held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_FolderLock.close_in_child)


def _settle(root: Path) -> bool:
    """With `root` locked: finish what a killed command left half done. True when a previous run was put back.

    The saved marker in ASIDE_DIR and the folder's own marker say how far the command got:
    the same bytes: it was killed while moving outputs aside (or while putting them back): put them back;
    the folder's marker says complete: the replacement completed, and only the deletion of the copy is missing;
    it says incomplete: the replacement never completed: delete what it wrote, put the previous run back.
    A copy without a saved marker is not tlearn's (or from a tlearn before this rule) and is left alone.

    Raises:
        RunDirError: a file stands where a previous output goes back, or the file system refused a move.
    """
    aside = root / ASIDE_DIR
    if aside.is_dir() and not aside.is_symlink() and all(_is_temporary(entry) for entry in aside.iterdir()):
        for entry in aside.iterdir():  # killed while saving the marker, before anything was moved
            _delete(entry)
        aside.rmdir()  # or emptied by a clean-up that was cut short
        return False
    saved = _saved_marker(aside)
    current = read_marker(root)
    if saved is None or current is None:
        return False
    try:
        if (root / MARKER_FILE).read_bytes() != saved:
            if current.get("complete"):
                _discard_aside(aside)
                return False
            _remove_outputs(root, current["kind"])
            atomic.write_bytes(root / MARKER_FILE, saved)  # from here on, a crash resumes at "put them back"
        _put_back(root, aside)
    except OSError as error:
        raise RunDirError(
            f"{root}: the previous run kept at {aside} could not be put back ({error}); move its files back by hand"
        ) from None
    return True


def _saved_marker(aside: Path) -> bytes | None:
    """The bytes of the marker tlearn saved beside the outputs it set aside; None when the folder is not such a
    copy."""
    if aside.is_symlink() or not aside.is_dir() or read_marker(aside) is None:
        return None
    return (aside / MARKER_FILE).read_bytes()


def _put_back(root: Path, aside: Path) -> None:
    """Move the outputs listed by the saved marker back into `root`, then drop the copy's marker and folder."""
    for name in sorted(_listed_outputs(read_marker(aside))):
        kept = aside / name
        if not os.path.lexists(kept):
            continue  # moved back already, before a crash
        if os.path.lexists(root / name):
            raise RunDirError(
                f"{root / name}: stands where the previous run's {name} (kept at {aside}) goes back; "
                "move one of them away"
            )
        kept.rename(root / name)
    (aside / MARKER_FILE).unlink()
    _remove_if_empty(aside)


def _discard_aside(aside: Path) -> None:
    """Delete the replaced run's outputs (only those its saved marker lists), then its marker, then the folder."""
    marker = read_marker(aside)
    if marker is None:
        return
    for name in _listed_outputs(marker):
        _delete(aside / name)
    (aside / MARKER_FILE).unlink()  # last: a crash before this is finished by the next `_settle`
    _remove_if_empty(aside)


def _remove_outputs(root: Path, kind: FolderKind) -> None:
    """Delete what a run of `kind` wrote in `root` (only names of the run-folder contract: never anything else)."""
    for name in OUTPUTS[kind]:
        _delete(root / name)


def _delete(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink()


def _is_temporary(entry: Path) -> bool:
    """A file `tlearn.util.atomic` was writing when the process died."""
    return entry.name.startswith(atomic.TEMP_PREFIX)


def _remove_if_empty(folder: Path) -> None:
    if not any(folder.iterdir()):
        folder.rmdir()  # else it keeps files someone put there: they stay, and a writer refuses the folder


def _listed_outputs(marker: dict[str, Any] | None) -> set[str]:
    """The outputs a marker lists that runs of its kind may write (a hand-edited name never reaches a path)."""
    if marker is None:
        return set()
    listed = marker.get("outputs", [])
    return {name for name in OUTPUTS[marker["kind"]] if isinstance(listed, list) and name in listed}


def _restored_message(root: Path) -> str:
    return f"{root}: an --overwrite was interrupted before it completed; the previous run is back in place"


def _marker(kind: FolderKind, *, outputs: list[str], complete: bool) -> dict[str, Any]:
    return {
        "format": MARKER_FORMAT,
        "kind": kind,
        "complete": complete,
        "outputs": outputs,
        "run_id": uuid.uuid4().hex,  # two markers are never the same bytes: `_settle` tells them apart
        "tlearn_version": __version__,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
