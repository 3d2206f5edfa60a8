"""A trained model at work: load it, predict, evaluate, export and serve it (`tlearn.load` returns a `Model`).

Each function has one implementation behind it (the engines, `evaluation.folder`, `deploy.export`,
`deploy.serving`) and accepts a model as a path, a loaded `Model` or an engine; `Model`'s methods are these same
functions applied to it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from tlearn.data.discovery import list_image_files
from tlearn.engines.base import ImageInput, InferenceEngine, Prediction
from tlearn.engines.loading import load_engine
from tlearn.engines.options import PredictOptions
from tlearn.errors import DataError, ModelFileError
from tlearn.evaluation.folder import Evaluation, EvaluationSettings, evaluate_folder, write_evaluation
from tlearn.runs.layout import RunFolder
from tlearn.runs.lifecycle import OutputFolder
from tlearn.util import atomic
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.data.preprocess import Preprocessing
    from tlearn.deploy.export import ExportResult
    from tlearn.deploy.serving import ServeSettings
    from tlearn.runs.model_dir import ModelConfig


class Model:
    """A trained classifier, loaded: predict, evaluate and export it (`tlearn.load` returns one).

    The same interface whichever runtime holds the weights: PyTorch for a model directory, onnxruntime for an
    exported `.onnx` file. `backend` is that engine (`tlearn.InferenceEngine`); every public member of it is
    read through the `Model` as well, so what an engine gains, a `Model` has without an edit here: `classes`
    (in output order), `config` (the model's config.json), `path` (where it was loaded from), `engine`
    ("torch" or "onnx"), `precision` (fp32, int8-static or int8-dynamic), `preprocessing` and
    `probabilities(pixels, flip=...)`. Only `predict` differs: it takes keywords instead of `PredictOptions`.

    Example:
        >>> clf = tlearn.load("runs/first")  # doctest: +SKIP
        >>> clf.predict(["bee.jpg"], top_k=1)[0].label, clf.engine  # doctest: +SKIP
        ('bees', 'torch')
        >>> clf.evaluate("holdout/").metrics  # doctest: +SKIP
        >>> clf.export("first.onnx")  # doctest: +SKIP
    """

    if TYPE_CHECKING:  # read through from `backend` by `__getattr__`; declared for type checkers and readers
        engine: str
        classes: list[str]
        config: ModelConfig
        path: Path | None
        precision: str
        preprocessing: Preprocessing

        def probabilities(self, pixels: np.ndarray, *, flip: bool = False) -> np.ndarray: ...

    def __init__(self, backend: InferenceEngine) -> None:
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        """The engine's public members (only called for names the `Model` itself does not have)."""
        if name.startswith("_") or name == "backend":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.backend, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *(name for name in dir(self.backend) if not name.startswith("_"))})

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        top_k: int = 3,
        batch_size: int = 32,
        workers: int | None = None,
        quiet: bool = True,
        reject: bool = True,
    ) -> Prediction | list[Prediction]:
        """Answers for files (decoded in parallel), PIL images or RGB arrays, in input order; one image (a path,
        a PIL image, an (H, W, 3) array) gets one answer, a list or an (N, H, W, 3) array a list of them.

        A file that cannot be decoded gets a `Prediction` with `error` set; the others are still predicted.
        A multi-label model's answers hold label sets; a model with a reject rule answers "unknown" for
        images it does not recognise, unless `reject` is False. The keywords are `PredictOptions` fields.

        Example:
            >>> [(p.label, round(p.probabilities[0], 2)) for p in clf.predict(["bee.jpg", picture])]  # doctest: +SKIP
            [('bees', 0.97), ('ants', 0.88)]
            >>> clf.predict("bee.jpg").label  # doctest: +SKIP
            'bees'
        """
        one, batch = _as_batch(images)
        options = PredictOptions(top_k=top_k, batch_size=batch_size, workers=workers, reject=reject)
        answers = self.backend.predict(batch, options, progress=Progress(quiet=quiet))
        return answers[0] if one else answers

    __call__ = predict

    def predict_proba(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int = 32, workers: int | None = None
    ) -> np.ndarray:
        """(N, len(classes)) probabilities, columns ordered as `classes` (scikit-learn's `predict_proba`): a
        softmax row per image, or a multi-label model's per-class sigmoids. One image gives one row.

        Raises:
            DataError: an image could not be read (naming it and the reason): a row of NaN is no answer.

        Example:
            >>> clf.predict_proba(["bee.jpg"]).shape, clf.classes  # doctest: +SKIP
            ((1, 2), ['ants', 'bees'])
        """
        _, batch = _as_batch(images)
        options = PredictOptions(top_k=len(self.classes), batch_size=batch_size, workers=workers, reject=False)
        column = {name: index for index, name in enumerate(self.classes)}
        rows = np.zeros((len(batch), len(self.classes)), dtype=np.float64)
        for row, answer in enumerate(self.backend.predict(batch, options, progress=Progress(quiet=True))):
            if answer.error is not None:
                raise DataError(f"{answer.source}: {answer.error}")
            rows[row, [column[label] for label in answer.labels]] = answer.probabilities
        return rows

    def evaluate(self, data: str | Path, **options: Any) -> Evaluation:
        """`tlearn.evaluate(this model, data, ...)`: metrics on a labelled folder (see `tlearn.evaluate`).

        Example:
            >>> evaluation = tlearn.load("runs/first").evaluate("holdout/", out="runs/holdout")  # doctest: +SKIP
            >>> evaluation.metrics[evaluation.split]["accuracy"]  # doctest: +SKIP
            0.95
        """
        return evaluate(self, data, **options)

    def export(self, out: str | Path, **options: Any) -> ExportResult:
        """`tlearn.export(this model, out, ...)`: a verified ONNX or TorchScript file (see `tlearn.export`).

        Example:
            >>> result = tlearn.load("runs/first").export("first.onnx")  # doctest: +SKIP
            >>> tlearn.load(result.path).predict(["bee.jpg"])[0].label  # doctest: +SKIP
            'bees'
        """
        return export(self, out, **options)

    def __repr__(self) -> str:
        return f"Model({self.path}, engine={self.engine}, classes={self.classes})"


def _as_batch(images: ImageInput | Sequence[ImageInput]) -> tuple[bool, list[ImageInput]]:
    """(whether one image was given, the images as a list): a path, a PIL image or an (H, W, 3) / (H, W) array
    is one image; an (N, H, W, 3) array or any other sequence is several."""
    if isinstance(images, str | Path | Image.Image):
        return True, [images]
    if isinstance(images, np.ndarray):
        return (True, [images]) if images.ndim in (2, 3) else (False, list(images))
    return False, list(images)


def load(path: str | Path, *, device: str = "auto", engine: str | None = None) -> Model:
    """Load a trained model: its directory (or the run directory that holds it) on PyTorch, or an exported
    `.onnx` file on onnxruntime; `engine` ("torch" or "onnx") defaults to the file type.

    Example:
        >>> clf = load("runs/first")  # doctest: +SKIP
        >>> [p.label for p in clf.predict(["ant.jpg", "bee.jpg"])]  # doctest: +SKIP
    """
    return Model(load_engine(path, engine=engine, device=device))


def _backend(model: str | Path | Model | InferenceEngine, *, device: str = "auto", engine: str | None = None):
    if isinstance(model, Model):
        return model.backend
    if isinstance(model, InferenceEngine):
        return model
    return load_engine(model, engine=engine, device=device)


def evaluate(
    model: str | Path | Model | InferenceEngine,
    data: str | Path,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
    **settings: Any,
) -> Evaluation:
    """Evaluate a model on a labelled folder (its test split when pre-split).

    With `out`, writes metrics.json, predictions.csv, the data report, the original ImageNet model's answers
    for sample images and report.html there (never into a training run's folder).

    Args:
        model: a model directory or `.onnx` file, or a loaded `Model`.
        data: the labelled folder.
        out: where to write the evaluation's files and report.
        overwrite: replace an earlier evaluation in `out` (refused without it, as for runs).
        device: for a model directory: auto, cpu, cuda or cuda:N.
        quiet: no progress bar or status lines.
        **settings: `tlearn.evaluation.folder.EvaluationSettings` fields: `split`, `tta` (flip test-time
            augmentation), `follow_links`, `batch_size`, `workers`.

    Example:
        >>> evaluate("runs/first", "holdout/", out="runs/first-holdout", tta=True).metrics  # doctest: +SKIP
    """
    options = EvaluationSettings(**settings)
    progress = Progress(quiet=quiet)
    if out is None:
        return evaluate_folder(_backend(model, device=device), data, options, progress=progress)
    from tlearn.report.page import write_report  # deferred: only evaluations that write a folder need it

    out = Path(out).expanduser()
    with OutputFolder.open(out, kind="evaluate", overwrite=overwrite, data=Path(data)):
        backend = _backend(model, device=device)
        evaluation = evaluate_folder(backend, data, options, progress=progress)
        write_evaluation(evaluation, out, backend)
        atomic.write_json(RunFolder(out).imagenet, _imagenet_samples(backend, evaluation, progress))
        write_report(out, progress=progress)
    return evaluation


def _imagenet_samples(backend: InferenceEngine, evaluation: Evaluation, progress: Progress) -> dict[str, Any]:
    """The original ImageNet model's answers for an evaluation's sample images (through the embedding cache)."""
    from tlearn.engines.imagenet import imagenet_samples, imagenet_top_k  # deferred: may have to build the backbone

    root = evaluation.source.root if evaluation.source else Path()
    return imagenet_samples(
        evaluation.predictions,
        lambda paths: imagenet_top_k(backend.config.backbone, [root / path for path in paths], progress=progress),
    )


def predict(
    model: str | Path | Model | InferenceEngine,
    sources: Sequence[str | Path],
    *,
    top_k: int = 3,
    device: str = "auto",
    engine: str | None = None,
    workers: int | None = None,
    quiet: bool = True,
    reject: bool = True,
) -> Iterator[Prediction]:
    """Answers for image files and folders (searched recursively), yielded as they are computed.

    Memory stays constant on folders of any size; a file that cannot be read gets a `Prediction` with `error`.
    Each answer holds the top-k labels, a multi-label model's label set, and under a reject rule the score and
    whether the image is "unknown" (`reject=False`: the best class anyway).

    Raises:
        DataError: a path does not exist, or no image file was found.

    Example:
        >>> for prediction in predict("runs/first", ["photos/"]):  # doctest: +SKIP
        ...     print(prediction.source, prediction.label)
    """
    files = list_image_files(list(sources))
    if not files:
        raise DataError(f"no image files found in {', '.join(map(str, sources))}")
    options = PredictOptions(top_k=top_k, workers=workers, reject=reject)
    backend = _backend(model, device=device, engine=engine)
    return backend.iter_file_predictions(files, options, progress=Progress(quiet=quiet))


def predict_on_ray(
    model: str | Path,
    sources: Sequence[str | Path],
    *,
    address: str = "auto",
    top_k: int = 3,
    engine: str | None = None,
    quiet: bool = True,
    reject: bool = True,
) -> Iterator[Prediction]:
    """`predict` on a Ray cluster's CPUs (`pip install "tlearn[ray]"`): the same answers, in the same order.

    `address` is what `ray.init` takes: "auto" (the cluster this machine belongs to), "ray://HOST:PORT", or
    "local" (a cluster of this machine's cores, started for the call). Every node must read the model and the
    images at the same paths (`tlearn.deploy.ray_predict`).

    Raises:
        DataError: a path does not exist, or no image file was found.
        TlearnError: Ray is not installed, or the address accepts no connection (at once, not after retries).

    Example:
        >>> for prediction in tlearn.predict_on_ray("runs/first", ["/shared/photos/"]):  # doctest: +SKIP
        ...     print(prediction.source, prediction.label)
    """
    from tlearn.deploy import ray_predict  # deferred: Ray only when asked for

    files = list_image_files(list(sources))
    if not files:
        raise DataError(f"no image files found in {', '.join(map(str, sources))}")
    options = PredictOptions(top_k=top_k, reject=reject)
    progress = Progress(quiet=quiet)
    return ray_predict.predict_on_ray(model, files, options, address=address, engine=engine, progress=progress)


def export(
    model: str | Path | Model | InferenceEngine,
    out: str | Path,
    *,
    quiet: bool = True,
    **options: Any,
) -> ExportResult:
    """Export a model to ONNX (fp32 or INT8) or TorchScript, verified against PyTorch before it is written.

    Args:
        model: a model directory (or the run directory holding it), or a model loaded from one.
        out: the file to write (`.onnx`, `.pt`).
        quiet: no status lines.
        **options: `tlearn.deploy.export.ExportOptions` fields: `export_format` ("onnx" or "torchscript"),
            `int8`, `calibration_data`, `check_data`, `opset`, `limits`.

    Raises:
        ExportError: a check failed (nothing is written), or the options do not fit together.
        ModelFileError: the model was not loaded from a model directory.

    Example:
        >>> export("runs/first", "first-int8.onnx", int8=True, calibration_data="data/train")  # doctest: +SKIP
    """
    from tlearn.deploy.export import ExportOptions, export_model  # deferred: imports torch and onnx

    if isinstance(model, Model | InferenceEngine):
        if model.path is None or not model.path.is_dir():
            raise ModelFileError(
                "export needs a model directory: export the folder that tlearn.train wrote (RUN/model), "
                "not an in-memory or ONNX model"
            )
        model = model.path
    fields = {item.name for item in dataclasses.fields(ExportOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"unknown export option(s): {', '.join(unknown)}; expected {', '.join(sorted(fields))}")
    paths = {key: Path(value) for key, value in options.items() if key.endswith("_data") and value is not None}
    return export_model(model, out, ExportOptions(**{**options, **paths}), progress=Progress(quiet=quiet))


def export_model(model: str | Path, out: str | Path, **options: Any) -> ExportResult:
    """Deprecated name of `tlearn.export` (same arguments); warns with a DeprecationWarning.

    Example:
        >>> tlearn.export("runs/first", "first.onnx")  # doctest: +SKIP
    """
    warnings.warn("tlearn.export_model is deprecated; use tlearn.export", DeprecationWarning, stacklevel=2)
    progress = options.pop("progress", None)
    return export(model, out, quiet=progress is None or progress.quiet, **options)


def push(
    run: str | Path,
    repo_id: str,
    *,
    local: str | Path | None = None,
    private: bool = False,
    overwrite: bool = False,
    token: str | None = None,
) -> str:
    """Share a model on the Hugging Face Hub with a model card written from its run (`tlearn.deploy.hub`);
    returns the repository's URL. With `local`, writes exactly what would be uploaded to that folder instead
    (replacing one only with `overwrite`, and only one written this way) and returns its path.

    `token` defaults to huggingface_hub's own (`HF_TOKEN`, or `huggingface-cli login`).

    Example:
        >>> tlearn.push("runs/ants", "me/ants-bees")  # doctest: +SKIP
        'https://huggingface.co/me/ants-bees'
        >>> tlearn.load("hf-hub:me/ants-bees").predict("bee.jpg")  # doctest: +SKIP
    """
    from tlearn.deploy.hub import push_model, stage_model  # deferred: huggingface_hub only when sharing

    if local is not None:
        return str(stage_model(run, local, repo_id=repo_id, overwrite=overwrite))
    return push_model(run, repo_id, private=private, token=token)


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str | None = None,
    device: str = "auto",
    settings: ServeSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve a model directory or `.onnx` file over HTTP (API + web page) until interrupted.

    Raises:
        ModelFileError: the model cannot be found or does not fit the engine (checked before the server starts).

    Example:
        >>> serve("ants.onnx", port=8000)  # doctest: +SKIP
    """
    from tlearn.deploy.server import run_server  # deferred: FastAPI and uvicorn
    from tlearn.deploy.serving import ServeSettings

    run_server(
        model,
        host=host,
        port=port,
        engine=engine,
        device=device,
        settings=settings or ServeSettings(),
        log_level=log_level,
    )
