"""A model exported by `tlearn export --format onnx`, run on onnxruntime (never imports torch).

The ONNX file is self-describing: its metadata holds the model's `config.json` (classes, preprocessing,
backbone, headline metrics, a multi-label model's thresholds, the reject rule) and how it was exported and
verified, so the file alone is enough to serve it. The graph takes normalised float32 (B, 3, H, W) and returns
calibrated probabilities (B, num_classes): softmax, or one sigmoid per class for a multi-label model. A model
whose reject rule scores by "knn" also outputs its embeddings (B, D), and the metadata holds the reference
embeddings (`reject.safetensors`, base64), so the score is computed by `tlearn.engines.answers` exactly as for
the model directory (see `tlearn.deploy.export` for why). Loading checks the metadata as a model directory's
config is checked (`check_model_config`) and that the graph's inputs and outputs fit it, so a tampered or
mismatched file is refused at load, not at the first request.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from tlearn.backbones.onnx_models import run_in_slices
from tlearn.data.preprocess import normalize
from tlearn.engines.answers import KnnReferences, fitting_references, needs_embeddings
from tlearn.engines.base import InferenceEngine
from tlearn.errors import ModelFileError
from tlearn.runs.model_dir import ModelConfig, check_format_version, check_model_config, describe_validation

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
EMBEDDINGS_NAME = "embeddings"  # the second output of a model with a "knn" reject rule
CONFIG_KEY = "tlearn_config"  # the model directory's config.json
EXPORT_KEY = "tlearn_export"  # precision, opset, and the checks the export passed
REFERENCES_KEY = "tlearn_reject_references"  # base64 of the model directory's reject.safetensors ("knn" rule)


class OnnxClassifier(InferenceEngine):
    """A tlearn model in an ONNX file on onnxruntime's CPU provider; same interface as `Classifier`.

    Example:
        >>> clf = OnnxClassifier.load("ants.onnx")  # doctest: +SKIP
        >>> clf.predict(["bee.jpg"], PredictOptions(top_k=1))[0].label  # doctest: +SKIP
        'bees'
    """

    engine = "onnx"

    def __init__(
        self,
        session: Any,
        config: ModelConfig,
        export_info: dict[str, Any],
        path: Path | None = None,
        references: KnnReferences | None = None,
    ) -> None:
        super().__init__(config, path, references)
        self.session = session
        self.export_info = export_info

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None) -> OnnxClassifier:
        """Open an ONNX file written by `tlearn export`.

        Args:
            path: the `.onnx` file.
            threads: onnxruntime intra-op threads (default: one per physical core).

        Raises:
            ModelFileError: missing file, not an ONNX model, an ONNX model without tlearn's metadata, or one
                whose reject rule's references are missing or unreadable.
        """
        import onnxruntime

        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelFileError(f"{path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelFileError(f"{path}: not a readable ONNX model ({first})") from None
        metadata = session.get_modelmeta().custom_metadata_map
        if CONFIG_KEY not in metadata:
            raise ModelFileError(f"{path}: an ONNX model without tlearn metadata; export it with `tlearn export`")
        try:
            values = json.loads(metadata[CONFIG_KEY])
            check_format_version(values, f"{path} (metadata {CONFIG_KEY})")
            config = ModelConfig.model_validate(values)
            export_info = json.loads(metadata.get(EXPORT_KEY, "{}"))
        except ValidationError as error:
            raise ModelFileError(f"{path}: invalid tlearn metadata ({describe_validation(error)})") from None
        except ValueError as error:
            first = str(error).strip().splitlines()[0]
            raise ModelFileError(f"{path}: invalid tlearn metadata ({first})") from None
        if not isinstance(export_info, dict):
            raise ModelFileError(f"{path}: invalid tlearn metadata ({EXPORT_KEY} is not an object)")
        check_model_config(config, f"{path} (metadata {CONFIG_KEY})")
        _check_graph(session, config, path)
        return cls(session, config, export_info, path, _references(metadata, config, path))

    @property
    def precision(self) -> str:
        """fp32, int8-static or int8-dynamic."""
        return str(self.export_info.get("precision", "fp32"))

    def _forward(self, pixels: np.ndarray, *, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        batch = normalize(pixels, self.preprocessing)  # (B, 3, H, W) float32
        if not embeddings:
            return run_in_slices(self.session, [OUTPUT_NAME], INPUT_NAME, batch)[0], None
        probabilities, features = run_in_slices(self.session, [OUTPUT_NAME, EMBEDDINGS_NAME], INPUT_NAME, batch)
        return probabilities, features  # (B, C), (B, D)


def _references(metadata: dict[str, str], config: ModelConfig, path: Path) -> KnnReferences | None:
    """The "knn" rule's references stored in the file's metadata (None for any other model).

    Raises:
        ModelFileError: the rule needs them and they are missing, not base64, or not valid references.
    """
    if not needs_embeddings(config):
        return None
    where = f"{path} (metadata {REFERENCES_KEY})"
    if REFERENCES_KEY not in metadata:
        raise ModelFileError(f"{where}: missing, and the model's knn reject rule needs it; export it again")
    try:
        payload = base64.b64decode(metadata[REFERENCES_KEY], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ModelFileError(f"{where}: not base64 ({error}); export it again with `tlearn export`") from None
    return fitting_references(KnnReferences.from_bytes(payload, where), config, where)


def _check_graph(session: Any, config: ModelConfig, path: Path) -> None:
    """The graph's input is (batch, 3, H, W) at the metadata's input size, its output has one column per class,
    and a model with a "knn" reject rule also outputs embeddings of the metadata's size.

    Raises:
        ModelFileError: names or shapes that do not fit the metadata (the file was edited or mixed up).
    """
    inputs = {node.name: node.shape for node in session.get_inputs()}
    outputs = {node.name: node.shape for node in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelFileError(
            f"{path}: the graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, expected "
            f"{INPUT_NAME!r} and {OUTPUT_NAME!r}; export it again with `tlearn export`"
        )
    height, width = config.preprocessing_spec().input_size
    expected_input = [None, 3, height, width]
    given_input = inputs[INPUT_NAME]
    if len(given_input) != 4 or any(
        isinstance(given, int) and expected is not None and given != expected
        for given, expected in zip(given_input, expected_input, strict=True)
    ):
        raise ModelFileError(
            f"{path}: the graph takes input of shape {given_input} but the metadata's preprocessing gives "
            f"(batch, 3, {height}, {width}); export it again with `tlearn export`"
        )
    output = outputs[OUTPUT_NAME]
    width_out = output[-1] if output else None
    if len(output) != 2 or (isinstance(width_out, int) and width_out != len(config.classes)):
        raise ModelFileError(
            f"{path}: the graph outputs shape {output} but the metadata lists {len(config.classes)} classes; "
            "the file's metadata and graph come from different models (export it again with `tlearn export`)"
        )
    if not needs_embeddings(config):
        return
    embedding = outputs.get(EMBEDDINGS_NAME)
    width_embedding = embedding[-1] if embedding else None
    if (
        embedding is None
        or len(embedding) != 2
        or (isinstance(width_embedding, int) and width_embedding != config.embedding_dim)
    ):
        raise ModelFileError(
            f"{path}: the model's knn reject rule needs a graph output {EMBEDDINGS_NAME!r} of shape "
            f"(batch, {config.embedding_dim}), got {embedding}; export it again with `tlearn export`"
        )
