"""Errors a user can act on.

Every error a user can fix (a missing folder, an empty class, a file that is not a model) is a
`TlearnError`: the CLI prints its message as one line and exits with code 2, without a traceback.
Anything else is a bug in tlearn and keeps its traceback (shown with `--debug`).
"""

from __future__ import annotations


class TlearnError(Exception):
    """A problem with the user's input or environment, explained in one line.

    Example:
        >>> tlearn.train("no/such/folder")  # doctest: +SKIP
        Traceback (most recent call last):
        tlearn.errors.DataError: no/such/folder: no such folder
    """

    exit_code = 2


class DataError(TlearnError):
    """The data folder cannot be used: missing, empty classes, fewer than two classes."""


class BackboneError(TlearnError):
    """The backbone cannot be built: unknown name, weights unavailable offline, incompatible checkpoint."""


class ModelFileError(TlearnError):
    """A model directory or file is missing, incomplete or not a tlearn model."""


class ModelOutputError(ModelFileError):
    """A loaded model gave outputs that are not probabilities (NaN or infinite): its files are damaged.

    Loading range-checks config.json, so this is the second line of defence (weights edited or corrupted): an
    answer is never printed or served with NaN in it.
    """


class RunDirError(TlearnError):
    """The run directory cannot be used (for example it already holds another run)."""


class ExportError(TlearnError):
    """An export failed its check against the PyTorch model (nothing is written), or cannot be made."""
