"""`--format tflite`: the probability graph as a TensorFlow Lite (LiteRT) flatbuffer, fp32, for Android, iOS and
small Linux boxes, with `MODEL.json` beside it.

The graph is the ONNX exporter's fp32 graph (`onnx_exporter.onnx_proto`), rebuilt in TensorFlow by
`onnx_to_tf.OnnxToTf` (channels-last: the input is `input`, float32 (batch, height, width, 3), normalised as
the JSON's `preprocessing` says; the outputs are `probabilities` and, for a "knn" reject rule, `embeddings`)
and converted by TensorFlow's TFLite converter with its built-in operations only, so any TFLite runtime runs
it. The check runs the very bytes that are written in TensorFlow's TFLite interpreter and compares with
PyTorch like the ONNX export. `MODEL.json` holds what the ONNX file keeps in its metadata: the model's
config (classes, preprocessing, thresholds, reject rule), the export's facts and checks, and a "knn" rule's
references (base64 safetensors).

TensorFlow is an optional dependency (`pip install "tlearn[tflite]"`, `tensorflow-cpu`, about 250 MB).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlearn.data.preprocess import normalize
from tlearn.deploy.exporters.onnx_exporter import onnx_proto
from tlearn.deploy.exporters.onnx_to_tf import OnnxToTf
from tlearn.deploy.exporters.registry import Exported, Exporter, register
from tlearn.deploy.verify import CheckSet, Outputs, decode_images, raise_if_failed
from tlearn.engines.answers import needs_embeddings, reject_scores
from tlearn.engines.onnx_engine import EMBEDDINGS_NAME, INPUT_NAME, OUTPUT_NAME
from tlearn.engines.torch_engine import Classifier
from tlearn.errors import ExportError
from tlearn.util.progress import Progress
from tlearn.util.text import first_line

if TYPE_CHECKING:
    from torch import nn

    from tlearn.deploy.export import ExportOptions


@register
class TfliteExporter(Exporter):
    """TensorFlow Lite, fp32 or INT8 (`options.int8`): `--out MODEL.tflite` also writes `MODEL.json` (config,
    checks) beside it."""

    name, suffix, companions, quantizes = "tflite", ".tflite", (".json",), True

    def export(self, graph: nn.Module, check_set: CheckSet, options: ExportOptions, progress: Progress) -> Exported:
        classifier = check_set.classifier
        progress.info("exporting to TensorFlow Lite (fp32, channels-last, dynamic batch)...")
        proto = onnx_proto(graph, classifier, options.opset)
        with _native_logs_silenced():
            tf = _tensorflow()
            converted = OnnxToTf(proto)
            flatbuffer, answers = _built(tf, converted, classifier)
        fp32_outputs = check_set.run(answers)
        checks = [check_set.compare_with_pytorch("tflite fp32 vs pytorch", fp32_outputs, options.limits)]
        raise_if_failed(checks)
        precision, notes = "fp32", []
        if options.int8:
            calibration = _calibration_images(check_set.calibration_files, classifier)
            precision, notes = _int8_kind(calibration)
            how = "dynamic: weights only" if calibration is None else f"static, calibrated on {len(calibration)} images"
            progress.info(f"quantizing to INT8 ({how})...")
            with _native_logs_silenced():
                flatbuffer, answers = _built(tf, converted, classifier, int8=True, calibration=calibration)
            checks.append(
                check_set.compare(
                    f"tflite {precision} vs tflite fp32",
                    check_set.run(answers),
                    reference=fp32_outputs,
                    min_agreement=options.limits.min_int8_agreement if check_set.real else None,
                )
            )
            raise_if_failed(checks)
        description = {
            "config": json.loads(classifier.config.model_dump_json()),
            "export": self.export_info(precision, checks=[asdict(check) for check in checks]),
            "input": _input_description(classifier),
        }
        if needs_embeddings(classifier.config) and classifier.references is not None:
            description["reject_references"] = base64.b64encode(classifier.references.to_bytes()).decode("ascii")
        companion = (json.dumps(description, indent=1) + "\n").encode()
        return Exported(flatbuffer, checks, precision, notes, {".json": companion})


def _calibration_images(files: list[Path], classifier: Classifier) -> np.ndarray | None:
    """The calibration images, normalised and channels-last as the file's input (None without any)."""
    if not files:
        return None
    pixels = decode_images(files, classifier.preprocessing)
    if len(pixels) == 0:
        raise ExportError(f"none of the {len(files)} calibration image(s) could be decoded")
    return np.ascontiguousarray(normalize(pixels, classifier.preprocessing).transpose(0, 2, 3, 1))


def _int8_kind(calibration: np.ndarray | None) -> tuple[str, list[str]]:
    """The INT8 precision a conversion gets, and what it leaves in float (as the ONNX exporter says it)."""
    if calibration is None:
        return "int8-dynamic", [
            "dynamic range: weights in int8, activations computed in float32 "
            "(pass --calibration-data DIR for integer activations too)"
        ]
    return "int8-static", [
        f"weights and activations in int8, activation ranges from {len(calibration)} calibration images; "
        "input and output stay float32"
    ]


def _built(
    tf: Any, graph: OnnxToTf, classifier: Classifier, *, int8: bool = False, calibration: np.ndarray | None = None
) -> tuple[bytes, Callable[[np.ndarray], Outputs]]:
    """The flatbuffer (`_convert`) and its answers on decoded images from TFLite's interpreter, run once already,
    so that the interpreter's own start-up lines fall inside `_native_logs_silenced`."""
    flatbuffer = _convert(tf, graph, classifier, int8=int8, calibration=calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TensorFlow 2.20+ points to ai-edge-litert: the same interpreter
        runner = tf.lite.Interpreter(model_content=flatbuffer).get_signature_runner()
    height, width = classifier.preprocessing.input_size
    runner(**{INPUT_NAME: np.zeros((1, height, width, 3), np.float32)})
    return flatbuffer, lambda pixels: _scored_probabilities(runner, classifier, pixels)


@contextlib.contextmanager
def _native_logs_silenced() -> Iterator[None]:
    """TensorFlow's C++ side logs to the process's stderr (absl start-up notices, oneDNN, the converter's
    passes, the XNNPACK delegate) whatever TF_CPP_MIN_LOG_LEVEL says: a dozen lines around the export's own.
    File descriptor 2 points to /dev/null meanwhile; errors still reach the user as `ExportError`s."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tensorflow() -> Any:
    """The tensorflow module, or a one-line error saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise ExportError('--format tflite needs TensorFlow: pip install "tlearn[tflite]"') from None
    return tf


def _convert(
    tf: Any, graph: OnnxToTf, classifier: Classifier, *, int8: bool = False, calibration: np.ndarray | None = None
) -> bytes:
    """The TFLite flatbuffer of `graph`, its signature taking `input` (NHWC) and naming its outputs; with `int8`,
    TensorFlow's post-training quantization: integer activations calibrated on `calibration`, or weights only
    without it (input and output stay float32 either way, so the file is fed like the fp32 one)."""
    height, width = classifier.preprocessing.input_size
    names = [OUTPUT_NAME, EMBEDDINGS_NAME][: len(graph.output_names)]

    class Probabilities(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=INPUT_NAME)])
        def serve(self, images: Any) -> dict[str, Any]:
            return dict(zip(names, graph(images), strict=True))

    module = Probabilities()
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8 and calibration is not None:
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        return bytes(converter.convert())
    except Exception as error:  # the converter raises its own untyped errors
        raise ExportError(
            f"TensorFlow Lite cannot convert this model ({first_line(error)}); try --format onnx"
        ) from None


def _scored_probabilities(runner: Any, classifier: Classifier, pixels: np.ndarray) -> Outputs:
    """Probabilities and reject scores of decoded images from the TFLite interpreter (as `scored_probabilities`)."""
    images = np.ascontiguousarray(normalize(pixels, classifier.preprocessing).transpose(0, 2, 3, 1))
    results = runner(**{INPUT_NAME: images})
    probabilities = np.asarray(results[OUTPUT_NAME])
    rule = classifier.config.reject
    if rule is None:
        return probabilities, None
    embeddings = np.asarray(results[EMBEDDINGS_NAME]) if needs_embeddings(classifier.config) else None
    return probabilities, reject_scores(rule, probabilities, embeddings, classifier.references)


def _input_description(classifier: Classifier) -> str:
    preprocessing = classifier.preprocessing
    height, width = preprocessing.input_size
    return (
        f"{INPUT_NAME}: float32 (batch, {height}, {width}, 3) RGB, channels last; resize "
        f"({preprocessing.interpolation}, crop_pct {preprocessing.crop_pct}, {preprocessing.crop_mode} crop), "
        f"scale to [0, 1], then (x - mean) / std with mean {list(preprocessing.mean)} and std "
        f"{list(preprocessing.std)}"
    )
