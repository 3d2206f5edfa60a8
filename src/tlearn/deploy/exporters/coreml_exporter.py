"""`--format coreml`: the probability graph as a Core ML ML Program (`MODEL.mlpackage`, fp32), for Apple devices.

What an app developer expects of a Core ML classifier, rather than a tensor-in tensor-out graph:
* the input is an **image** (`image`, RGB, the model's input size): Core ML scales its pixels to [0, 1] and the
  graph normalises them with the backbone's mean and std, so Vision (`VNCoreMLRequest`, crop-and-scale "center
  crop") or `MLModel.prediction` feed it directly;
* a single-label model is a Core ML **classifier**: `classLabel` (the top class) and `classLabel_probs` (every
  class's probability), which Vision returns as `VNClassificationObservation`s; a multi-label model outputs
  `probabilities` (one sigmoid per class, in class order) and its thresholds travel in the metadata.
The model's `config.json` (classes, preprocessing, thresholds, a "confidence" reject rule, metrics) and the
export's facts are in the package's user-defined metadata under `tlearn.config` / `tlearn.export`. A "knn"
reject rule scores embeddings against training references outside the graph, which Core ML cannot carry: such
a model is refused (export it to ONNX, or train it with `--reject confidence`).

The graph is captured with `torch.export` (coremltools' tracing path cannot convert the dynamic "same" padding
of the tf_ EfficientNets; the exported program can) and converted with fp32 compute, batch 1 (images one at a
time, as Core ML runs them). The captured program, fed as Core ML feeds it, is checked against PyTorch on every
platform (the image input's scaling and normalisation). Core ML itself predicts only on macOS: there the package
read back from the written bytes is checked against PyTorch like every other export; elsewhere the export says
in a note that the package could not be run. coremltools is an optional dependency (`pip install "tlearn[coreml]"`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tlearn.deploy.exporters.registry import Exported, Exporter, register
from tlearn.deploy.verify import CheckSet, Outputs, raise_if_failed
from tlearn.engines.answers import needs_embeddings, reject_scores
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util.progress import Progress
from tlearn.util.text import first_line

if TYPE_CHECKING:
    from tlearn.deploy.export import ExportOptions

IMAGE_INPUT = "image"
LABEL_OUTPUT = "classLabel"  # a classifier's top class; its probabilities are `classLabel_probs`
PROBABILITIES_OUTPUT = "probabilities"  # a multi-label model's (1, K) output
CONFIG_KEY, EXPORT_KEY = "tlearn.config", "tlearn.export"


class _FromImagePixels(nn.Module):
    """The probability graph behind Core ML's image input: pixels in [0, 1] → normalised → probabilities."""

    def __init__(self, graph: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.probabilities = graph  # not `graph`: the exported program's GraphModule has its own `.graph`
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.probabilities((pixels - self.mean) / self.std)


@register
class CoreMlExporter(Exporter):
    """Core ML ML Program, fp32: `--out MODEL.mlpackage` (a folder, as Xcode expects it)."""

    name, suffix, folder = "coreml", ".mlpackage", True

    def export(self, graph: nn.Module, check_set: CheckSet, options: ExportOptions, progress: Progress) -> Exported:
        classifier = check_set.classifier
        if needs_embeddings(classifier.config):
            raise ExportError(
                '--format coreml: this model\'s "knn" reject rule compares embeddings with its training references '
                "outside the graph, which Core ML cannot carry; export it with --format onnx, or train it with "
                "--reject confidence"
            )
        with _quiet_coremltools():
            coremltools = _coremltools()  # first: a missing extra is said before any work
        progress.info("exporting to Core ML (ML Program, fp32, image input)...")
        program = _image_program(graph, classifier)
        fed_as_core_ml = check_set.run(lambda pixels: _program_probabilities(program, classifier, pixels))
        checks = [check_set.compare_with_pytorch("coreml input program vs pytorch", fed_as_core_ml, options.limits)]
        raise_if_failed(checks)
        with _quiet_coremltools(), tempfile.TemporaryDirectory(prefix="tlearn-export-") as work:
            model = _converted(coremltools, program, classifier)
            model.user_defined_metadata[CONFIG_KEY] = classifier.config.model_dump_json()
            model.user_defined_metadata[EXPORT_KEY] = json.dumps(self.export_info("fp32"))
            model.short_description = f"tlearn image classifier: {', '.join(classifier.config.classes)}"
            model.author = "tlearn"
            package = Path(work) / "model.mlpackage"
            model.save(str(package))
            files = {path.relative_to(package).as_posix(): path.read_bytes() for path in _files(package)}
            if not runtime_available():
                note = (
                    "not run here: Core ML predicts only on macOS; on a Mac the same export is checked "
                    "against PyTorch before it is written"
                )
                return Exported(b"", checks, "fp32", [note], files=files)
            reloaded = load_package(coremltools, package)
            outputs = check_set.run(lambda pixels: _scored_probabilities(reloaded, classifier, pixels))
        checks.append(check_set.compare_with_pytorch("coreml fp32 vs pytorch", outputs, options.limits))
        raise_if_failed(checks)
        return Exported(b"", checks, "fp32", [], files=files)


def runtime_available() -> bool:
    """Whether Core ML can predict here (macOS with coremltools' native runtime)."""
    try:
        from coremltools import libcoremlpython  # noqa: F401 - the runtime's binding, built on macOS only
    except ImportError:
        return False
    return True


def load_package(coremltools: Any, package: Path) -> Any:
    """The written package read back for prediction (on the CPU, as the check compares with PyTorch's CPU)."""
    return coremltools.models.MLModel(str(package), compute_units=coremltools.ComputeUnit.CPU_ONLY)


def _coremltools() -> Any:
    """The coremltools module, or a one-line error saying how to install it."""
    try:
        import coremltools
    except ImportError:
        raise ExportError('--format coreml needs coremltools: pip install "tlearn[coreml]"') from None
    return coremltools


def _image_program(graph: nn.Module, classifier: Classifier) -> torch.export.ExportedProgram:
    """The probability graph behind Core ML's image input (pixels scaled to [0, 1]), captured by torch.export at
    batch 1."""
    preprocessing = classifier.preprocessing
    wrapped = _FromImagePixels(graph, preprocessing.mean, preprocessing.std).eval()
    try:
        with torch.no_grad():
            return torch.export.export(wrapped, (torch.zeros(1, 3, *preprocessing.input_size),)).run_decompositions({})
    except Exception as error:  # torch.export's refusals come as several exception types
        raise ExportError(f"Core ML export: torch.export cannot capture this model ({first_line(error)})") from None


def _program_probabilities(
    program: torch.export.ExportedProgram, classifier: Classifier, pixels: np.ndarray
) -> Outputs:
    """The captured program fed as Core ML feeds it (each image's pixels × 1/255), before any conversion: checked
    on every platform, so the image input's scaling and normalisation are verified even where Core ML cannot run."""
    module = program.module()
    with torch.no_grad():
        rows = [
            module(torch.from_numpy(image).permute(2, 0, 1)[None].float() * (1 / 255.0)).numpy() for image in pixels
        ]
    probabilities = np.concatenate(rows).astype(np.float32)
    rule = classifier.config.reject
    return probabilities, None if rule is None else reject_scores(rule, probabilities, None, None)


def _converted(coremltools: Any, program: torch.export.ExportedProgram, classifier: Classifier) -> Any:
    """The captured program converted to an fp32 ML Program with an image input (a classifier for single-label
    models)."""
    shape = (1, 3, *classifier.preprocessing.input_size)
    label_sets = classifier.config.task_type.answers_with_sets  # a multi-label model: per-class probabilities
    try:
        return coremltools.convert(
            program,
            inputs=[
                coremltools.ImageType(
                    name=IMAGE_INPUT, shape=shape, scale=1 / 255.0, color_layout=coremltools.colorlayout.RGB
                )
            ],
            outputs=[coremltools.TensorType(name=PROBABILITIES_OUTPUT)],
            classifier_config=None if label_sets else coremltools.ClassifierConfig(list(classifier.config.classes)),
            convert_to="mlprogram",
            compute_precision=coremltools.precision.FLOAT32,
            minimum_deployment_target=coremltools.target.iOS15,
        )
    except Exception as error:  # the converter raises its own untyped errors
        raise ExportError(f"Core ML cannot convert this model ({first_line(error)}); try --format onnx") from None


def _scored_probabilities(model: Any, classifier: Classifier, pixels: np.ndarray) -> Outputs:
    """(N, K) probabilities in class order and reject scores of preprocessed images, one Core ML call each."""
    from PIL import Image

    classes = classifier.config.classes
    rows = []
    for image in pixels:
        answer = model.predict({IMAGE_INPUT: Image.fromarray(image)})
        if classifier.config.task_type.answers_with_sets:
            rows.append(np.asarray(answer[PROBABILITIES_OUTPUT], dtype=np.float32).reshape(-1))
        else:
            by_class = answer[f"{LABEL_OUTPUT}_probs"]
            rows.append([float(by_class[name]) for name in classes])
    probabilities = np.asarray(rows, dtype=np.float32).reshape(len(pixels), len(classes))
    rule = classifier.config.reject
    return probabilities, None if rule is None else reject_scores(rule, probabilities, None, None)


def _files(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.is_file())


@contextlib.contextmanager
def _quiet_coremltools() -> Iterator[None]:
    """coremltools announces untested torch and scikit-learn versions, its missing runtime off macOS and a progress
    bar per conversion pass: none of that is the user's business when the conversion succeeds."""
    loggers = [logging.getLogger(name) for name in ("coremltools", "root")]
    levels = [logger.level for logger in loggers]
    try:
        # the bars are tqdm's, written to the sys.stderr of the moment; a failed conversion still raises
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
