"""The export formats by name: what an exporter is, and the table `ExportOptions.export_format` picks from.

Like timm's `register_model`, a format is a class decorated with `@register` in its own module; the package's
`__init__` imports the built-in ones so they are in the table before any lookup. The options, the entry point
and the CLI's error messages ask this table (and each exporter's capabilities) instead of testing format names,
so a new format is one new module: subclass `Exporter`, decorate it with `@register`, import it in `__init__`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import torch

from tlearn import __version__
from tlearn.errors import ExportError

if TYPE_CHECKING:
    from torch import nn

    from tlearn.deploy.export import ExportOptions
    from tlearn.deploy.verify import CheckSet, ExportCheck
    from tlearn.util.progress import Progress


class Exported(NamedTuple):
    """What an exporter hands back: the file's bytes (written only by the caller, after every check passed)."""

    payload: bytes
    checks: list[ExportCheck]
    precision: str  # fp32, int8-static or int8-dynamic
    notes: list[str]  # what the user should know about this export (e.g. what INT8 left in fp32)
    # files that belong beside the main one, by the suffix that replaces its own (OpenVINO's ".bin" weights)
    companions: dict[str, bytes] = {}  # noqa: RUF012 - never mutated; a NamedTuple field cannot take a factory
    # a folder format's files by their path inside the folder (Core ML's .mlpackage); `payload` is then empty
    files: dict[str, bytes] = {}  # noqa: RUF012 - as above


class Exporter(ABC):
    """One export format: turns the probability graph into a verified file's bytes.

    Attributes:
        name: the format as `--format` and `ExportOptions.export_format` spell it.
        suffix: the file name ending the format is usually given (`--out model.onnx`); not enforced.
        quantizes: the format accepts `--int8` and `--calibration-data`.
        companions: suffixes of the files written beside the main one (OpenVINO's ".bin"): the main file must
            then end in `suffix`, so the runtime finds them by its name.
        folder: the format is a folder of files (Core ML's ".mlpackage"), written whole under `--out`, which
            must end in `suffix` (Xcode and Core ML recognise a package by it).

    Example:
        >>> @register  # doctest: +SKIP
        ... class OpenVinoExporter(Exporter):
        ...     name, suffix = "openvino", ".xml"
        ...     def export(self, graph, check_set, options, progress): ...
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    quantizes: ClassVar[bool] = False
    companions: ClassVar[tuple[str, ...]] = ()
    folder: ClassVar[bool] = False

    @abstractmethod
    def export(self, graph: nn.Module, check_set: CheckSet, options: ExportOptions, progress: Progress) -> Exported:
        """Convert `graph`, check the result on `check_set` (raising `ExportError` at the first failed check)
        and return the bytes to write with the checks they passed."""

    def export_info(self, precision: str, **facts: Any) -> dict[str, Any]:
        """The facts of an export stored in the file (`tlearn_export`): format, precision, the format's own
        `facts` (opset, checks), and the versions that made it.

        Example:
            >>> list(exporter_for("onnx").export_info("int8-static", opset=18))
            ['format', 'precision', 'opset', 'tlearn_version', 'torch_version']
        """
        return {
            "format": self.name,
            "precision": precision,
            **facts,
            "tlearn_version": __version__,
            "torch_version": torch.__version__,
        }


_EXPORTERS: dict[str, Exporter] = {}
ExporterType = TypeVar("ExporterType", bound=type[Exporter])


def register(exporter: ExporterType) -> ExporterType:
    """Class decorator: make `exporter` selectable by its `name`.

    Raises:
        ValueError: another exporter already has that name (two modules claiming a format is a bug).
    """
    registered = _EXPORTERS.get(exporter.name)
    if registered is not None and type(registered) is not exporter:
        raise ValueError(f"export format {exporter.name!r} is already registered by {type(registered).__name__}")
    _EXPORTERS[exporter.name] = exporter()
    return exporter


def exporter_names() -> tuple[str, ...]:
    """The registered formats, in registration order (the built-in ones first)."""
    return tuple(_EXPORTERS)


def exporter_for(name: str) -> Exporter:
    """The exporter registered as `name`.

    Raises:
        ExportError: no such format; the message lists the registered ones.

    Example:
        >>> exporter_for("onnx").quantizes, exporter_for("torchscript").suffix
        (True, '.pt')
    """
    exporter = _EXPORTERS.get(name)
    if exporter is None:
        raise ExportError(f"unknown export format {name!r}; expected one of {', '.join(_EXPORTERS)}")
    return exporter
