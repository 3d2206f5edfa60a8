"""Exporting a trained model to ONNX (fp32 or INT8) or TorchScript, verified before anything is written.

The exported graph is the whole classifier: normalised float32 (B, 3, H, W) in, calibrated probabilities
out (softmax of logits / temperature; one sigmoid per class for a multi-label model), with a dynamic batch
dimension. Batch norm is folded into the convolutions first. The model's `config.json` (classes,
preprocessing, backbone, metrics, a multi-label model's thresholds, the reject rule) travels inside the file —
ONNX metadata or TorchScript extra files — so the file alone describes how to feed it and how to answer.

A "knn" reject rule needs each image's embedding and the training references. The graph gets a second output,
the embeddings (B, D) its classifier reads, and the references travel in the file as they are in the model
directory (`reject.safetensors`: base64 in the ONNX metadata, an extra file in TorchScript). The score itself
is computed outside the graph, by the same `tlearn.engines.answers.KnnReferences.similarity` that chose the
threshold at training and that the PyTorch engine runs, rather than as a MatMul + TopK inside the graph
against the references as a constant: the answer then cannot depend on the runtime (onnxruntime's TopK and
matmul order against NumPy's partition), the references keep their float16 storage (an fp32 constant doubles
them: 25 MB at 5000 x 1280), INT8 quantization cannot reach the kNN part (nothing of it is in the graph),
and the file still exposes the embeddings for other uses.

Every export is run next to the PyTorch model on the same images and must agree (see `ExportLimits`) on the
probabilities, the reject scores and the answers (label sets, "unknown"); a failed check raises
`ExportError` and leaves no file behind (files are written atomically, only after the check). INT8 is
onnxruntime's quantization: static (QDQ, per-channel weights, calibrated on real images) with
`calibration_data`, dynamic (MatMul/Gemm weights only) without; the classifier and the softmax or sigmoid
after it stay fp32 in static INT8. Imports torch.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from tlearn import __version__
from tlearn.backbones.fusion import fold_batchnorm
from tlearn.backbones.onnx_export import export_dynamic_batch
from tlearn.data.decoding import BatchDecoder, default_workers
from tlearn.data.discovery import list_image_files
from tlearn.data.preprocess import Preprocessing, normalize
from tlearn.engines.answers import REFERENCES_FILE, answer_keys, needs_embeddings, reject_scores
from tlearn.engines.onnx_engine import (
    CONFIG_KEY,
    EMBEDDINGS_NAME,
    EXPORT_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    REFERENCES_KEY,
    OnnxClassifier,
)
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.evaluation.tasks import Task
from tlearn.runs.layout import MODEL_DIR
from tlearn.runs.records import split_files
from tlearn.util import atomic
from tlearn.util.progress import Progress

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 18
MAX_CHECK_IMAGES = 256
MAX_CALIBRATION_IMAGES = 128
CHECK_BATCH_SIZES = (1, 32)  # the first image alone, then batches of 32: the dynamic batch dimension is exercised


@dataclass(frozen=True)
class ExportLimits:
    """What an export must achieve to be written.

    Attributes:
        max_abs_diff: largest allowed |Δprobability| between an fp32 export (ONNX or TorchScript) and PyTorch.
        max_score_diff: largest allowed |Δreject score| between an fp32 export and PyTorch (a reject rule's
            score; "knn" standardises the embeddings, which magnifies their differences a little).
        min_int8_agreement: smallest allowed share of real images INT8 and fp32 give the same answer (top-1
            class; the label set or "unknown" for models that answer so).
    """

    max_abs_diff: float = 1e-4
    max_score_diff: float = 1e-3
    min_int8_agreement: float = 0.99


@dataclass
class ExportCheck:
    """One comparison of an exported model with its reference on the same images."""

    name: str  # e.g. "onnx fp32 vs pytorch"
    images: int
    image_source: str
    max_abs_diff: float
    top1_agreement: float
    limit: str
    passed: bool
    max_score_diff: float | None = None  # largest |Δreject score| (models with a reject rule)
    answer_agreement: float | None = None  # share of images given the same label set / "unknown" answer

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        extra = "" if self.max_score_diff is None else f", max |Δscore| {self.max_score_diff:.2e}"
        if self.answer_agreement is not None:
            extra += f", same answer {100 * self.answer_agreement:.2f}%"
        return (
            f"check {self.name}: {self.images} images ({self.image_source}): max |Δprob| {self.max_abs_diff:.2e}, "
            f"top-1 agreement {100 * self.top1_agreement:.2f}%{extra}  [{self.limit}] {verdict}"
        )


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
        export_format: "onnx" or "torchscript".
        int8: quantize the ONNX model (static with `calibration_data`, dynamic otherwise).
        calibration_data: a folder of representative images (searched recursively) for static INT8.
        check_data: a folder of images to verify on. Default: the run's validation split when its data folder
            is still there, else the calibration images, else random pixels.
        opset: ONNX opset.
        limits: the thresholds a check must meet.

    Example:
        >>> tlearn.export("runs/ants", "ants.onnx", int8=True, calibration_data="data/train")  # doctest: +SKIP
    """

    export_format: str = "onnx"
    int8: bool = False
    calibration_data: Path | None = None
    check_data: Path | None = None
    opset: int = DEFAULT_OPSET
    limits: ExportLimits = ExportLimits()

    def __post_init__(self) -> None:
        if self.export_format not in FORMATS:
            raise ExportError(f"unknown export format {self.export_format!r}; expected one of {', '.join(FORMATS)}")
        if (self.int8 or self.calibration_data) and self.export_format != "onnx":
            raise ExportError("--int8 and --calibration-data apply to --format onnx only")
        if self.calibration_data and not self.int8:
            raise ExportError("--calibration-data is for INT8 calibration; add --int8")


def export_model(
    model: str | Path,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
    *,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a model directory to ONNX or TorchScript, check it against PyTorch, then write it atomically.

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
    classifier = Classifier.load(model, device="cpu")
    calibration_data = options.calibration_data
    calibration_files = _image_files(calibration_data, MAX_CALIBRATION_IMAGES) if calibration_data else []
    if calibration_data and not calibration_files:
        raise ExportError(f"{calibration_data}: no image files for calibration")
    check_set = _check_set(classifier, options.check_data, calibration_files, progress)
    graph = probability_graph(classifier)
    if options.export_format == "torchscript":
        payload, checks = _torchscript(graph, check_set, options.limits, progress)
        precision, notes = "fp32", []
    else:
        payload, checks, precision, notes = _onnx(graph, check_set, calibration_files, options, progress)
    atomic.write_bytes(out, payload)
    return ExportResult(
        out, options.export_format, precision, len(payload), time.perf_counter() - started, checks, notes
    )


class _ProbabilityGraph(nn.Module):
    """The classifier with its calibration: (B, 3, H, W) normalised → (B, num_classes) probabilities (the task's:
    a softmax, or a sigmoid per class), and with `embeddings` also the (B, D) features the classifier reads."""

    def __init__(self, model: nn.Module, temperature: float, *, task: Task, embeddings: bool) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.task = task
        self.embeddings = embeddings

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.embeddings:
            return self._calibrated(self.model(batch))
        features = self.model.forward_features(batch)
        pre_logits = self.model.forward_head(features, pre_logits=True)  # (B, D)
        return self._calibrated(self.model.forward_head(features)), pre_logits

    def _calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        return self.task.torch_probabilities(logits / self.temperature)


def probability_graph(classifier: Classifier) -> nn.Module:
    """An inference copy of the classifier (batch norm folded) that outputs calibrated probabilities, and the
    embeddings as well for a "knn" reject rule."""
    model = copy.deepcopy(classifier.model).eval().to(memory_format=torch.contiguous_format)
    fold_batchnorm(model)
    config = classifier.config
    return _ProbabilityGraph(
        model, config.temperature, task=config.task_type, embeddings=needs_embeddings(config)
    ).eval()


def _onnx(
    graph: nn.Module,
    check_set: _CheckSet,
    calibration_files: list[Path],
    options: ExportOptions,
    progress: Progress,
) -> tuple[bytes, list[ExportCheck], str, list[str]]:
    """Export (and quantize) to ONNX, check each stage; returns (file bytes, checks, precision, notes)."""
    classifier = check_set.classifier
    opset, limits = options.opset, options.limits
    progress.info(f"exporting to ONNX (opset {opset}, dynamic batch)...")
    with tempfile.TemporaryDirectory(prefix="tlearn-export-") as work:
        fp32_path = Path(work) / "fp32.onnx"
        fp32_proto = _onnx_proto(graph, classifier.preprocessing, opset)
        if needs_embeddings(classifier.config):
            _name_second_output(fp32_proto.graph, EMBEDDINGS_NAME)
        _describe(fp32_proto, classifier, {"format": "onnx", "precision": "fp32", "opset": opset})
        fp32_path.write_bytes(fp32_proto.SerializeToString())
        fp32 = OnnxClassifier.load(fp32_path)
        fp32_outputs = check_set.run(fp32.scored_probabilities)
        checks = [
            check_set.compare(
                "onnx fp32 vs pytorch",
                fp32_outputs,
                max_abs_diff=limits.max_abs_diff,
                max_score_diff=limits.max_score_diff,
            )
        ]
        _raise_if_failed(checks)
        final_path, precision, notes = fp32_path, "fp32", []
        if options.int8:
            final_path = Path(work) / "int8.onnx"
            precision, notes = _quantize(fp32_path, final_path, calibration_files, classifier.preprocessing, progress)
            int8_outputs = check_set.run(OnnxClassifier.load(final_path).scored_probabilities)
            checks.append(
                check_set.compare(
                    f"onnx {precision} vs onnx fp32",
                    int8_outputs,
                    reference=fp32_outputs,
                    min_agreement=limits.min_int8_agreement if check_set.real else None,
                )
            )
            _raise_if_failed(checks)
        proto = onnx.load(str(final_path))
    _describe(
        proto,
        classifier,
        {"format": "onnx", "precision": precision, "opset": opset, "checks": [asdict(check) for check in checks]},
    )
    return proto.SerializeToString(), checks, precision, notes


def _describe(proto: onnx.ModelProto, classifier: Classifier, export_info: dict[str, Any]) -> None:
    """Store the model's config, the export's facts, a "knn" rule's references and a plain description of
    input and output in `proto`."""
    export_info = {**export_info, "tlearn_version": __version__, "torch_version": torch.__version__}
    config = classifier.config
    output = (
        f"{OUTPUT_NAME}: float32 (batch, {len(classifier.classes)}), {config.task_type.activation}(logits / "
        f"{config.temperature:g}), columns in the order of 'classes'"
    )
    properties = {
        CONFIG_KEY: config.model_dump_json(),
        EXPORT_KEY: json.dumps(export_info),
        "classes": json.dumps(classifier.classes),
        "preprocessing": json.dumps(classifier.preprocessing.to_dict()),
        "input": _input_description(classifier.preprocessing),
        "output": output,
    }
    if config.thresholds is not None:
        properties["output"] += f"; an image's labels are the classes reaching 'thresholds' {config.thresholds}"
    if config.reject is not None:
        properties["output"] += (
            f"; the answer is 'unknown' when the {config.reject.score} score is below {config.reject.threshold:g}"
        )
    if needs_embeddings(config) and classifier.references is not None:
        properties["output"] += (
            f"; {EMBEDDINGS_NAME}: float32 (batch, {config.embedding_dim}), the classifier's input, scored against "
            f"the references in '{REFERENCES_KEY}' (base64 safetensors)"
        )
        properties[REFERENCES_KEY] = base64.b64encode(classifier.references.to_bytes()).decode("ascii")
    onnx.helper.set_model_props(proto, properties)
    proto.producer_name, proto.producer_version = "tlearn", __version__


def _name_second_output(graph: Any, name: str) -> None:
    """Rename the graph's second output (the exporter names it after its last operation) to `name`."""
    old = graph.output[1].name
    for node in graph.node:
        node.input[:] = [name if value == old else value for value in node.input]
        node.output[:] = [name if value == old else value for value in node.output]
    for value in [*graph.output, *graph.value_info]:
        if value.name == old:
            value.name = name


def _onnx_proto(graph: nn.Module, preprocessing: Preprocessing, opset: int) -> onnx.ModelProto:
    """The fp32 ONNX graph (torch.export based exporter); batch is dynamic, height and width are fixed."""
    try:
        return export_dynamic_batch(graph, preprocessing.input_size, opset=opset, names=(INPUT_NAME, OUTPUT_NAME))
    except Exception as error:  # the exporter raises many types; the user needs the first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"this model cannot be exported to ONNX ({type(error).__name__}: {first}); try --format torchscript"
        ) from None


def _quantize(
    fp32_path: Path, out_path: Path, calibration_files: list[Path], preprocessing: Preprocessing, progress: Progress
) -> tuple[str, list[str]]:
    """Quantize an fp32 ONNX file to INT8; returns (precision, notes)."""
    prepared = out_path.with_name("prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    if not calibration_files:
        progress.info("quantizing to INT8 (dynamic: MatMul/Gemm weights; no --calibration-data)...")
        quantize_dynamic(
            str(prepared),
            str(out_path),
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        return "int8-dynamic", [
            "dynamic quantization covers MatMul/Gemm weights only: convolutions stay fp32 "
            "(pass --calibration-data DIR for static INT8 convolutions)"
        ]
    progress.info(f"quantizing to INT8 (static, calibrated on {len(calibration_files)} images)...")
    sensitive = _sensitive_nodes(onnx.load(str(prepared)).graph)
    quantize_static(
        str(prepared),
        str(out_path),
        _CalibrationReader(calibration_files, preprocessing),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=sensitive,
    )
    return "int8-static", [
        f"kept in fp32: the stem convolution, the classifier and its softmax or sigmoid ({len(sensitive)} nodes)"
    ]


def _sensitive_nodes(graph: Any) -> list[str]:
    """Nodes left in fp32: the first convolution (it sees raw pixels), the last Gemm/MatMul (the classifier),
    every node after it (the temperature, the softmax or a multi-label model's sigmoid) and any Softmax.

    Quantizing these moved EfficientNet-Lite0's probabilities the most for the least speed (measured on
    hymenoptera: top-1 agreement with fp32 98.7% → 99.4%). A sigmoid is chosen by position, not by type: the
    backbone's SiLU activations are sigmoids too.
    """
    nodes = list(graph.node)
    first_conv = next((node.name for node in nodes if node.op_type == "Conv"), None)
    linear = [index for index, node in enumerate(nodes) if node.op_type in ("Gemm", "MatMul")]
    after_classifier = [node.name for node in nodes[linear[-1] :]] if linear else []
    softmax = [node.name for node in nodes if node.op_type == "Softmax"]
    return list(dict.fromkeys(name for name in (first_conv, *after_classifier, *softmax) if name))


class _CalibrationReader(CalibrationDataReader):
    """Feeds onnxruntime's calibration normalised batches of 16 images."""

    def __init__(self, files: list[Path], preprocessing: Preprocessing) -> None:
        pixels = _decode(files, preprocessing)
        if len(pixels) == 0:
            raise ExportError(f"none of the {len(files)} calibration image(s) could be decoded")
        self._batches: Iterator[np.ndarray] = (
            normalize(pixels[start : start + 16], preprocessing) for start in range(0, len(pixels), 16)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _torchscript(
    graph: nn.Module, check_set: _CheckSet, limits: ExportLimits, progress: Progress
) -> tuple[bytes, list[ExportCheck]]:
    """Trace to TorchScript, reload from bytes and check; returns (file bytes, checks)."""
    classifier = check_set.classifier
    progress.info("tracing to TorchScript...")
    height, width = classifier.preprocessing.input_size
    config = classifier.config
    export_info = {
        "format": "torchscript",
        "precision": "fp32",
        "tlearn_version": __version__,
        "torch_version": torch.__version__,
    }
    extra: dict[str, str | bytes] = {
        "config.json": config.model_dump_json(),
        "tlearn_export.json": json.dumps(export_info),
    }
    if classifier.references is not None:  # the "knn" rule's references, as in the model directory
        extra[REFERENCES_FILE] = classifier.references.to_bytes()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # TorchScript is deprecated upstream and says so on every call; it is still the format asked for here.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        torch.jit.save(
            torch.jit.trace(graph, torch.zeros(2, 3, height, width), check_trace=False), buffer, _extra_files=extra
        )
        payload = buffer.getvalue()
        reloaded = torch.jit.load(io.BytesIO(payload), map_location="cpu")

    def run(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.no_grad():
            outputs = reloaded(torch.from_numpy(normalize(pixels, classifier.preprocessing)))
        probabilities, embeddings = (outputs[0], outputs[1]) if isinstance(outputs, tuple) else (outputs, None)
        probabilities = probabilities.numpy()
        embeddings = None if embeddings is None else embeddings.numpy()
        if config.reject is None:
            return probabilities, None
        return probabilities, reject_scores(config.reject, probabilities, embeddings, classifier.references)

    checks = [
        check_set.compare(
            "torchscript vs pytorch",
            check_set.run(run),
            max_abs_diff=limits.max_abs_diff,
            max_score_diff=limits.max_score_diff,
        )
    ]
    _raise_if_failed(checks)
    return payload, checks


def _raise_if_failed(checks: list[ExportCheck]) -> None:
    failed = [check for check in checks if not check.passed]
    if failed:
        raise ExportError(f"export not written: {failed[0].summary()}")


Outputs = tuple[np.ndarray, np.ndarray | None]  # (N, C) probabilities, (N,) reject scores or None


@dataclass
class _CheckSet:
    """The images every export is checked on, with the PyTorch model's probabilities and reject scores."""

    classifier: Classifier
    pixels: np.ndarray  # (N, H, W, 3) uint8, preprocessed
    source: str  # where the images came from, for the report
    real: bool  # False for random pixels: agreement is then reported, not enforced
    reference: Outputs  # PyTorch's

    def run(self, model_call: Callable[[np.ndarray], Outputs]) -> Outputs:
        """Probabilities and reject scores of all check images from an exported model's
        `scored_probabilities(pixels)`."""
        return _in_check_batches(model_call, self.pixels)

    def compare(
        self,
        name: str,
        outputs: Outputs,
        *,
        reference: Outputs | None = None,
        max_abs_diff: float | None = None,
        max_score_diff: float | None = None,
        min_agreement: float | None = None,
    ) -> ExportCheck:
        """Compare probabilities, reject scores and answers with the reference (PyTorch's unless given).

        `min_agreement` applies to the answers: the top-1 class, or the label set and "unknown" for a model
        that answers so (`tlearn.engines.answers.answer_keys`).
        """
        config = self.classifier.config
        (probabilities, scores), (expected, expected_scores) = outputs, reference or self.reference
        difference = float(np.abs(probabilities - expected).max())
        agreement = float((probabilities.argmax(1) == expected.argmax(1)).mean())
        given, wanted = answer_keys(config, probabilities, scores), answer_keys(config, expected, expected_scores)
        answers_agree = float(np.mean([a == b for a, b in zip(given, wanted, strict=True)])) if len(given) else 1.0
        score_difference = None
        if scores is not None and expected_scores is not None:
            score_difference = float(np.abs(scores - expected_scores).max())
        passed, limits = True, []
        if max_abs_diff is not None:
            passed &= difference <= max_abs_diff
            limits.append(f"max |Δprob| ≤ {max_abs_diff:g}")
        if max_score_diff is not None and score_difference is not None:
            passed &= score_difference <= max_score_diff
            limits.append(f"max |Δscore| ≤ {max_score_diff:g}")
        if min_agreement is not None:
            passed &= answers_agree >= min_agreement
            limits.append(f"agreement ≥ {100 * min_agreement:g}%")
        return ExportCheck(
            name,
            len(expected),
            self.source,
            difference,
            agreement,
            ", ".join(limits) or "reported only (no real images)",
            bool(passed),
            score_difference,
            answers_agree,
        )


def _check_set(
    classifier: Classifier, check_data: str | Path | None, calibration_files: list[Path], progress: Progress
) -> _CheckSet:
    """The check images: `check_data`, else the run's validation split, else the calibration images, else noise."""
    if check_data is not None:
        files, source = _image_files(check_data, MAX_CHECK_IMAGES), str(check_data)
    else:
        files, source = _validation_split(classifier.path), "the run's validation split"
        if not files and calibration_files:
            files, source = calibration_files, "the calibration images"
    pixels = _decode(files, classifier.preprocessing)
    real = len(pixels) > 0
    if real:
        progress.info(f"checking on {len(pixels)} images from {source}")
    else:
        height, width = classifier.preprocessing.input_size
        pixels = np.random.default_rng(0).integers(0, 256, (32, height, width, 3), dtype=np.uint8)
        source = "random pixels: no real images found, pass --check-data DIR"
    return _CheckSet(classifier, pixels, source, real, _in_check_batches(classifier.scored_probabilities, pixels))


def _in_check_batches(model_call: Callable[[np.ndarray], Outputs], pixels: np.ndarray) -> Outputs:
    """(N, C) probabilities and (N,) reject scores (or None) computed in batches of CHECK_BATCH_SIZES: batch 1
    and a full batch both run."""
    first, rest = CHECK_BATCH_SIZES
    chunks = [pixels[:first], *(pixels[start : start + rest] for start in range(first, len(pixels), rest))]
    outputs = [model_call(chunk) for chunk in chunks if len(chunk)]
    scores = [batch_scores for _, batch_scores in outputs]
    return (
        np.concatenate([probabilities for probabilities, _ in outputs]),
        None if any(batch is None for batch in scores) else np.concatenate(scores),
    )


def _validation_split(folder: Path | None) -> list[Path]:
    """The run's validation images, if its data folder is still there (at most MAX_CHECK_IMAGES)."""
    if folder is None or folder.name != MODEL_DIR:
        return []
    return _evenly_spaced(split_files(folder.parent, "val"), MAX_CHECK_IMAGES)


def _image_files(folder: str | Path, limit: int) -> list[Path]:
    return _evenly_spaced(list_image_files([Path(folder)]), limit)


def _evenly_spaced(files: list[Path], limit: int) -> list[Path]:
    """At most `limit` files spread over the whole list (every class of a sorted folder is represented)."""
    if len(files) <= limit:
        return files
    return [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]


def _decode(files: list[Path], preprocessing: Preprocessing) -> np.ndarray:
    """(N, H, W, 3) uint8 preprocessed pixels of the decodable files."""
    height, width = preprocessing.input_size
    with BatchDecoder(files, preprocessing, batch_size=32, workers=default_workers()) as batches:
        arrays = [batch.pixels for batch in batches]
    return np.concatenate(arrays) if arrays else np.empty((0, height, width, 3), dtype=np.uint8)


def _input_description(preprocessing: Preprocessing) -> str:
    height, width = preprocessing.input_size
    return (
        f"{INPUT_NAME}: float32 (batch, 3, {height}, {width}) RGB; resize ({preprocessing.interpolation}, "
        f"crop_pct {preprocessing.crop_pct}, {preprocessing.crop_mode} crop), scale to [0, 1], then "
        f"(x - mean) / std with mean {list(preprocessing.mean)} and std {list(preprocessing.std)}"
    )
