"""Exporting a trained model to a deployable file (ONNX fp32 or INT8, TorchScript, OpenVINO IR, a Core ML package),
verified before it is written.

The exported graph is the whole classifier: normalised float32 (B, 3, H, W) in, calibrated probabilities out,
with a dynamic batch dimension, and for a "knn" reject rule the embeddings as a second output
(`tlearn.deploy.graph`, which also says why the kNN score is computed outside the graph). The model's
`config.json` (classes, preprocessing, backbone, metrics, a multi-label model's thresholds, the reject rule)
travels inside the file, so the file alone describes how to feed it and how to answer.

The format is picked by name from a registry (`tlearn.deploy.exporters`: one module per format); this module
only composes the steps every format shares. Every export is run next to the PyTorch model on the same images
and must agree (`tlearn.deploy.verify`, `ExportLimits`) on the probabilities, the reject scores and the answers;
a failed check raises `ExportError` and leaves no file behind (files are written atomically, only after the
check). Imports torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tlearn.deploy.exporters import exporter_for, exporter_names
from tlearn.deploy.graph import probability_graph
from tlearn.deploy.verify import MAX_CALIBRATION_IMAGES, CheckSet, ExportCheck, ExportLimits, image_files
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util import atomic
from tlearn.util.progress import Progress

__all__ = ["ExportCheck", "ExportLimits", "ExportOptions", "ExportResult", "export_model", "probability_graph"]

DEFAULT_OPSET = 18


@dataclass
class ExportResult:
    """What was written, and the checks it passed.

    Example:
        >>> result = export_model("runs/ants", "ants.onnx")  # doctest: +SKIP
        >>> result.precision, result.size_bytes, all(check.passed for check in result.checks)  # doctest: +SKIP
        ('fp32', 13652197, True)
    """

    path: Path
    export_format: str
    precision: str  # fp32, int8-static or int8-dynamic
    size_bytes: int
    seconds: float
    checks: list[ExportCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportOptions:
    """How to export (the options of `tlearn export`).

    Attributes:
        export_format: a registered format (`tlearn.deploy.exporters`): "onnx", "torchscript", "openvino",
            "coreml" or "tflite".
        int8: quantize (formats that can: ONNX), static with `calibration_data`, dynamic otherwise.
        calibration_data: a folder of representative images (searched recursively) for static INT8.
        check_data: a folder of images to verify on. Default: the run's validation split when its data folder
            is still there, else the calibration images, else random pixels.
        opset: ONNX opset.
        limits: the thresholds a check must meet.

    Raises:
        ExportError: an unknown format (the message lists the registered ones), INT8 options for a format that
            does not quantize, or calibration images without `int8`.

    Example:
        >>> ExportOptions(export_format="torchscript").limits.max_abs_diff
        0.0001
        >>> ExportOptions(export_format="torchscript", int8=True)
        Traceback (most recent call last):
        ...
        tlearn.errors.ExportError: --int8 and --calibration-data apply to --format onnx, tflite only
    """

    export_format: str = "onnx"
    int8: bool = False
    calibration_data: Path | None = None
    check_data: Path | None = None
    opset: int = DEFAULT_OPSET
    limits: ExportLimits = field(default_factory=ExportLimits)

    def __post_init__(self) -> None:
        exporter = exporter_for(self.export_format)
        if (self.int8 or self.calibration_data) and not exporter.quantizes:
            quantizing = ", ".join(name for name in exporter_names() if exporter_for(name).quantizes)
            raise ExportError(f"--int8 and --calibration-data apply to --format {quantizing} only")
        if self.calibration_data and not self.int8:
            raise ExportError("--calibration-data is for INT8 calibration; add --int8")


def export_model(
    model: str | Path,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
    *,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a model directory in a registered format, check it against PyTorch, then write it atomically.

    Args:
        model: model directory (or run directory holding `model/`).
        out: the file to write (`.onnx`, `.pt`).
        options: format, quantization, check images, opset and limits.
        progress: status lines.

    Returns:
        The written file with the checks it passed.

    Raises:
        ExportError: a check failed (nothing is written), or the options do not fit together.

    Example:
        >>> options = ExportOptions(int8=True, calibration_data=Path("data/train"))  # doctest: +SKIP
        >>> result = export_model("runs/ants", "ants.onnx", options)  # doctest: +SKIP
        >>> [check.summary() for check in result.checks]  # doctest: +SKIP
    """
    progress = progress or Progress(quiet=True)
    started = time.perf_counter()
    out = Path(out)
    exporter = exporter_for(options.export_format)
    if exporter.companions and out.suffix.lower() != exporter.suffix:
        raise ExportError(
            f"{out}: --format {exporter.name} writes its weights beside the file, found by its name; "
            f"name it with {exporter.suffix} (e.g. --out model{exporter.suffix})"
        )
    if exporter.folder:
        _check_package_target(out, exporter.name, exporter.suffix)
    classifier = Classifier.load(model, device="cpu")
    calibration_data = options.calibration_data
    calibration_files = image_files(calibration_data, MAX_CALIBRATION_IMAGES) if calibration_data else []
    if calibration_data and not calibration_files:
        raise ExportError(f"{calibration_data}: no image files for calibration")
    check_set = CheckSet.collect(classifier, options.check_data, calibration_files, progress)
    exported = exporter.export(probability_graph(classifier), check_set, options, progress)
    if exporter.folder:
        _write_package(out, exported.files)
    else:
        for suffix, payload in exported.companions.items():  # first, so the main file never names missing weights
            atomic.write_bytes(out.with_suffix(suffix), payload)
        atomic.write_bytes(out, exported.payload)
    seconds = time.perf_counter() - started
    written = [exported.payload, *exported.companions.values(), *exported.files.values()]
    size = sum(len(payload) for payload in written)
    return ExportResult(out, options.export_format, exported.precision, size, seconds, exported.checks, exported.notes)


PACKAGE_MANIFEST = "Manifest.json"  # every Core ML package holds one at its top


def _check_package_target(out: Path, format_name: str, suffix: str) -> None:
    """A folder format's `--out`: named with its suffix, and replacing nothing but an earlier package.

    The package is swapped in whole, so whatever stood at `out` goes; that is only done to a package (its
    manifest at the top), never to another folder or a file the user keeps there.
    """
    if out.suffix.lower() != suffix:
        raise ExportError(
            f"{out}: --format {format_name} writes a {suffix} folder; name it so (e.g. --out model{suffix})"
        )
    if out.is_symlink() or (out.exists() and not (out.is_dir() and (out / PACKAGE_MANIFEST).is_file())):
        raise ExportError(
            f"{out}: exists and is not a {suffix} package; tlearn replaces only an earlier package there: "
            "move it away or choose another --out"
        )


def _write_package(out: Path, files: dict[str, bytes]) -> None:
    """The package's files under a temporary folder beside `out`, swapped in by one rename."""
    with atomic.replace_directory(out) as staging:
        for name, payload in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
