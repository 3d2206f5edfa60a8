"""Creating, replacing and completing run folders without ever losing a user's file.

Every folder tlearn writes a run or an evaluation into carries a marker file (`.tlearn-run.json`) saying
what kind of folder it is, which outputs tlearn wrote there, and whether the run completed. The rules:

* `--out` may not be the data folder, lie inside it, or contain it (a run would mix with the images).
* A folder that holds files but no marker is not ours: it is refused, `--overwrite` or not.
* `--overwrite` touches only the outputs the old marker lists. They are moved aside (one rename each), the
  new run writes, and only when it has completed are the old outputs deleted; if it fails they are put back.
  Other files in the folder (a user's notes) are never touched; one named like an output is refused.
* The marker's `complete` flag is written last. A run without it is resumable (`--resume`) or refused
  clearly; its model is never loaded for serving, export or prediction.
* An evaluation never writes into a training run's folder.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tlearn import __version__
from tlearn.errors import RunDirError
from tlearn.runs.layout import (
    AUDIT_OUTPUTS,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EVALUATION_FILE,
    EVALUATION_OUTPUTS,
    METRICS_FILE,
    MODEL_DIR,
    RUN_OUTPUTS,
    SELECT_OUTPUTS,
)
from tlearn.util import atomic

MARKER_FILE = ".tlearn-run.json"
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


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker, or None when there is none (or it is unreadable, which counts as none)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _legacy_marker(folder: Path) -> dict[str, Any] | None:
    """The marker a folder written before markers existed would carry, recognised by its telltale files."""
    if all((folder / name).is_file() for name in (CONFIG_FILE, METRICS_FILE, f"{MODEL_DIR}/config.json")):
        kind, outputs = "train", RUN_OUTPUTS
    elif all((folder / name).is_file() for name in (EVALUATION_FILE, METRICS_FILE)):
        kind, outputs = "evaluate", EVALUATION_OUTPUTS
    else:
        return None
    return _marker(kind, outputs=[name for name in outputs if (folder / name).exists()], complete=True)


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


class OutputFolder:
    """One run or evaluation being written: prepared on entry, marked complete or rolled back on exit.

    Example:
        >>> with OutputFolder.open(Path("runs/a"), kind="train", overwrite=True) as folder:  # doctest: +SKIP
        ...     write_everything(folder.root)
    """

    def __init__(self, root: Path, kind: FolderKind, aside: Path | None, moved: list[str], created: bool) -> None:
        self.root = root
        self.kind = kind
        self._aside = aside  # where the previous outputs wait until this run completes
        self._moved = moved  # their names
        self._created = created  # the folder did not exist before
        marker = root / MARKER_FILE
        self._previous_marker = marker.read_bytes() if moved and marker.is_file() else None

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

        Args:
            root: the folder (created if missing).
            kind: "train", "evaluate", "audit" or "select" (which outputs the folder may hold).
            overwrite: replace the outputs of a previous run of the same kind (moved aside until success).
            resume: continue the incomplete run in `root` (training only).
            data: the data folder, which `root` may not overlap.

        Raises:
            RunDirError: the folder is not usable for this run (see the module's rules).
        """
        folder = cls._prepare(root.expanduser(), kind, overwrite=overwrite, resume=resume, data=data)
        try:
            yield folder
        except BaseException:
            # A run that replaced a previous one gives the folder back to it; a fresh run that got as far as a
            # checkpoint stays (unfinished, resumable); anything else leaves the folder as it found it.
            if folder._moved:
                folder._restore_previous()
            elif not (kind == "train" and any((root / CHECKPOINTS_DIR).glob("*/state.pt"))):
                folder._remove_outputs()
                (root / MARKER_FILE).unlink(missing_ok=True)
                if folder._created and not any(root.iterdir()):
                    root.rmdir()
            raise
        folder._complete()

    @classmethod
    def _prepare(
        cls, root: Path, kind: FolderKind, *, overwrite: bool, resume: bool, data: Path | None
    ) -> OutputFolder:
        refuse_overlap(root, data)
        if root.exists() and not root.is_dir():
            raise RunDirError(f"{root}: exists and is not a directory")
        outputs = OUTPUTS[kind]
        marker = (read_marker(root) or _legacy_marker(root)) if root.is_dir() else None
        entries = sorted(path.name for path in root.iterdir()) if root.is_dir() else []
        if resume:
            if marker is None or marker.get("kind") != "train" or not (root / CONFIG_FILE).is_file():
                raise RunDirError(f"{root}: no run to resume (no unfinished tlearn run here)")
            if marker.get("complete"):
                raise RunDirError(f"{root}: the run is already complete (nothing to resume)")
            return cls(root, kind, None, [], created=False)
        foreign = [name for name in entries if name not in (MARKER_FILE, ASIDE_DIR)]
        if foreign and marker is None:
            raise RunDirError(
                f"{root}: holds files that tlearn did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new --out"
            )
        if marker is not None and marker.get("kind") != kind:
            what = _HOLDS.get(marker.get("kind"), "another kind of tlearn output")
            raise RunDirError(f"{root}: holds {what}; write this {_HOLDS[kind].split(' ', 1)[1]} elsewhere")
        ours = set(marker.get("outputs", [])) if marker else set()
        colliding = [name for name in foreign if name in outputs and name not in ours]
        if colliding:
            raise RunDirError(
                f"{root}: {', '.join(colliding[:3])} were not written by tlearn but this run would write them; "
                "move them away or choose another --out"
            )
        previous = [name for name in foreign if name in ours]
        replace = kind == "evaluate" or overwrite  # an evaluation folder is re-evaluated in place
        if previous and not replace:
            state = "an unfinished run (continue it with --resume)" if is_incomplete_run(root) else "a previous run"
            raise RunDirError(f"{root}: already holds {state}; pass --overwrite to replace it or choose another --out")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        aside, moved = None, []
        if previous:
            shutil.rmtree(root / ASIDE_DIR, ignore_errors=True)  # a crash between success and cleanup left it
            aside = root / ASIDE_DIR
            aside.mkdir()
            for name in previous:
                (root / name).rename(aside / name)
                moved.append(name)
        folder = cls(root, kind, aside, moved, created)  # reads the previous marker before it is replaced
        atomic.write_json(root / MARKER_FILE, _marker(kind, outputs=list(outputs), complete=False))
        return folder

    def _complete(self) -> None:
        """Record exactly what this run wrote, mark it complete (written last), then drop the old outputs."""
        outputs = OUTPUTS[self.kind]
        written = [name for name in outputs if (self.root / name).exists()]
        atomic.write_json(self.root / MARKER_FILE, _marker(self.kind, outputs=written, complete=True))
        if self._aside is not None:
            shutil.rmtree(self._aside, ignore_errors=True)

    def _remove_outputs(self) -> None:
        """Delete what this run wrote (only names of the run-folder contract: never anything else)."""
        outputs: Sequence[str] = OUTPUTS[self.kind]
        for name in outputs:
            target = self.root / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()

    def _restore_previous(self) -> None:
        """After a failure: remove this run's outputs and put the previous run's back."""
        self._remove_outputs()
        for name in self._moved:
            (self._aside / name).rename(self.root / name)
        shutil.rmtree(self._aside, ignore_errors=True)
        if self._previous_marker is not None:
            atomic.write_bytes(self.root / MARKER_FILE, self._previous_marker)
        else:  # a run from before markers: describe what came back
            atomic.write_json(self.root / MARKER_FILE, _marker(self.kind, outputs=self._moved, complete=True))


def _marker(kind: FolderKind, *, outputs: list[str], complete: bool) -> dict[str, Any]:
    return {
        "format": "tlearn-run",
        "kind": kind,
        "complete": complete,
        "outputs": outputs,
        "tlearn_version": __version__,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
