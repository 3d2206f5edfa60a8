"""The one front door: train, load, evaluate, predict, export, serve and demo.

Every `tlearn` command is a thin wiring over exactly one of these functions, and each of them has one
implementation behind it (the pipeline, the engines, `evaluation.folder`, `deploy.export`, `deploy.serving`).
`load` returns a `Model`, the handle whose methods are these same functions applied to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlearn.config import TrainConfig, build_config, load_config_file
from tlearn.data.discovery import list_image_files
from tlearn.engines.base import ImageInput, InferenceEngine, Prediction
from tlearn.engines.loading import load_engine
from tlearn.errors import DataError, ModelFileError, RunDirError, TlearnError
from tlearn.evaluation.folder import Evaluation, EvaluationSettings, evaluate_folder, write_evaluation
from tlearn.pipeline import Run, run_training
from tlearn.runs.layout import RunFolder, sample_rows
from tlearn.runs.lifecycle import OutputFolder
from tlearn.runs.model_dir import ModelConfig
from tlearn.util import atomic
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.audits.findings import AuditSettings
    from tlearn.audits.folder import Audit
    from tlearn.audits.select import Selection
    from tlearn.data.preprocess import Preprocessing
    from tlearn.deploy.export import ExportResult
    from tlearn.deploy.serving import ServeSettings

BEFORE_AFTER_SAMPLES = 8  # sample images of an evaluation's report, with the original ImageNet model's answers


def train(
    data: str | Path | None = None,
    *,
    out: str | Path | None = None,
    config: TrainConfig | str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    quiet: bool = False,
    **settings: Any,
) -> Run:
    """Train and evaluate a classifier on a folder of labelled images.

    Args:
        data: `DATA/<class>/*` or `DATA/{train,val[,test]}/<class>/*`.
        out: run directory (default `runs/<data>-<mode>-<time>`); must be empty unless `overwrite`.
        config: a `TrainConfig`, or a YAML/JSON file of settings; keyword `settings` override it.
        overwrite: replace the outputs of a previous run in `out` (only once the new run has succeeded).
        resume: continue the interrupted run in `out` with its saved configuration; settings given again
            must agree with it.
        quiet: no progress bars or status lines.
        **settings: any `TrainConfig` field, e.g. `mode="finetune"`, `backbone="resnet50"`, `epochs=10`.

    Returns:
        The finished `Run` (metrics, history, paths).

    Example:
        >>> run = train("data/", mode="finetune", epochs=8, out="runs/finetune")  # doctest: +SKIP
        >>> run.metrics["test"]["accuracy"]  # doctest: +SKIP
    """
    if isinstance(config, TrainConfig):
        base = config.model_dump()
    elif config is not None:
        base = load_config_file(config)
    else:
        base = {}
    if resume:
        if out is None:
            raise TlearnError("--resume needs --out: the run directory to continue")
        resolved = _saved_config_agreeing_with(Path(out), {**base, "data": data, **settings})
    else:
        resolved = build_config(base, data=data, **settings)
        if resolved.backbone == "best":
            resolved = _best_backbone(resolved)
    if out is None:
        out = _default_out(resolved.data, resolved.mode)
    return run_training(resolved, out=out, overwrite=overwrite, resume=resume, progress=Progress(quiet=quiet))


def _default_out(data: str | Path, kind: str) -> Path:
    """runs/<data folder or label file's stem>-<kind>-<time>: where results go when no --out is given."""
    source = Path(data).expanduser().resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source.stem if source.is_file() else source.name}-{kind}-{stamp}"


def _best_backbone(config: TrainConfig) -> TrainConfig:
    """`--backbone best`: the winner of the last `tlearn select` on this data folder, recorded in the config."""
    from tlearn.audits.select import best_backbone

    if config.weights is not None:
        raise TlearnError("--backbone best chooses the weights too; drop --weights (or name the backbone)")
    choice = best_backbone(config.data)
    return config.model_copy(update={"backbone": choice.name, "weights": choice.weights})


def _saved_config_agreeing_with(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The run's saved configuration, after checking that every setting given again agrees with it."""
    saved_path = RunFolder(run_dir).config
    if not saved_path.is_file():
        raise RunDirError(f"{run_dir}: no run to resume ({saved_path.name} not found)")
    saved = build_config(load_config_file(saved_path))
    given = {key: value for key, value in given.items() if value is not None}
    candidate = build_config(saved.model_dump(), **given)
    for key in given:
        before, after = getattr(saved, key), getattr(candidate, key)
        if isinstance(before, Path) and isinstance(after, Path):
            before, after = before.expanduser().resolve(), after.expanduser().resolve()
        if before != after:
            raise RunDirError(
                f"{key}={given[key]} disagrees with the run being resumed ({key}: {getattr(saved, key)} "
                f"in {saved_path}); drop it, or start a new run"
            )
    return saved


class Model:
    """A trained classifier, loaded: predict, evaluate and export it (`tlearn.load` returns one).

    The same interface whichever runtime holds the weights: PyTorch for a model directory, onnxruntime for an
    exported `.onnx` file (`engine` says which; `backend` is the engine object itself).

    Example:
        >>> clf = tlearn.load("runs/first")  # doctest: +SKIP
        >>> clf.predict(["bee.jpg"], top_k=1)[0].label  # doctest: +SKIP
        'bees'
        >>> clf.evaluate("holdout/").metrics  # doctest: +SKIP
        >>> clf.export("first.onnx")  # doctest: +SKIP
    """

    def __init__(self, backend: InferenceEngine) -> None:
        self.backend = backend

    @property
    def engine(self) -> str:
        """The runtime: "torch" or "onnx"."""
        return self.backend.engine

    @property
    def classes(self) -> list[str]:
        """Class names in output order."""
        return self.backend.classes

    @property
    def config(self) -> ModelConfig:
        """The model's `config.json` (backbone, classes, preprocessing, temperature, headline metrics)."""
        return self.backend.config

    @property
    def path(self) -> Path | None:
        """Where the model was loaded from (a model directory or an `.onnx` file)."""
        return self.backend.path

    @property
    def preprocessing(self) -> Preprocessing:
        """The backbone's evaluation preprocessing."""
        return self.backend.preprocessing

    @property
    def precision(self) -> str:
        """fp32, int8-static or int8-dynamic."""
        return self.backend.precision

    def probabilities(self, pixels: np.ndarray, *, flip: bool = False) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_classes) calibrated probabilities."""
        return self.backend.probabilities(pixels, flip=flip)

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int = 3,
        batch_size: int = 32,
        workers: int | None = None,
        quiet: bool = True,
        reject: bool = True,
    ) -> list[Prediction]:
        """Answers for files (decoded in parallel), PIL images or RGB arrays, in input order.

        A file that cannot be decoded gets a `Prediction` with `error` set; the others are still predicted.
        A multi-label model's answers hold label sets; a model with a reject rule answers "unknown" for
        images it does not recognise, unless `reject` is False.

        Example:
            >>> [(p.label, round(p.probabilities[0], 2)) for p in clf.predict(["bee.jpg", picture])]  # doctest: +SKIP
            [('bees', 0.97), ('ants', 0.88)]
        """
        return self.backend.predict(
            images, top_k=top_k, batch_size=batch_size, workers=workers, progress=Progress(quiet=quiet), reject=reject
        )

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
    with OutputFolder.open(out, kind="evaluate", data=Path(data)):
        backend = _backend(model, device=device)
        evaluation = evaluate_folder(backend, data, options, progress=progress)
        write_evaluation(evaluation, out, backend)
        atomic.write_json(RunFolder(out).imagenet, _imagenet_samples(backend, evaluation, progress))
        write_report(out, progress=progress)
    return evaluation


def _imagenet_samples(backend: InferenceEngine, evaluation: Evaluation, progress: Progress) -> dict[str, Any]:
    """The original ImageNet model's answers for an evaluation's sample images (through the embedding cache)."""
    from tlearn.engines.imagenet import imagenet_top_k  # deferred: may have to build the backbone

    samples = sample_rows(evaluation.predictions, BEFORE_AFTER_SAMPLES)
    root = evaluation.source.root if evaluation.source else Path()
    try:
        answers = imagenet_top_k(backend.config.backbone, [root / row["path"] for row in samples], progress=progress)
    except TlearnError as error:
        return {"reason": str(error)}
    return {"answers": {row["path"]: answer for row, answer in zip(samples, answers, strict=True) if answer}}


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
    backend = _backend(model, device=device, engine=engine)
    return backend.iter_file_predictions(
        files, top_k=top_k, workers=workers, progress=Progress(quiet=quiet), reject=reject
    )


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
    from tlearn.deploy.serving import ServeSettings, run_server  # deferred: FastAPI and uvicorn

    run_server(
        model,
        host=host,
        port=port,
        engine=engine,
        device=device,
        settings=settings or ServeSettings(),
        log_level=log_level,
    )


def demo(out: str | Path = "tlearn-demo", *, quiet: bool = False, device: str = "auto") -> Run:
    """Draw the demo images under `out/data`, train a linear classifier into `out/run` and evaluate it.

    Returns:
        The finished `Run`.

    Example:
        >>> run = demo("tlearn-demo")  # doctest: +SKIP
        >>> run.metrics["test"]["accuracy"] > 0.9  # doctest: +SKIP
    """
    from tlearn.data.demo import DEMO_CLASSES, draw_dataset

    out = Path(out)
    progress = Progress(quiet=quiet)
    data = draw_dataset(out / "data")
    progress.info(f"demo: drew {len(DEMO_CLASSES)} classes of shapes under {data}")
    # The linear head: the demo shows the whole path in well under a minute (auto would also fine-tune).
    config = TrainConfig(data=data, device=device, mode="linear")
    return run_training(config, out=out / "run", overwrite=True, progress=progress)


def audit(
    data: str | Path,
    *,
    out: str | Path | None = None,
    backbone: str = "tf_efficientnet_lite0",
    weights: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    settings: AuditSettings | None = None,
    quiet: bool = False,
) -> Audit:
    """Audit a labelled folder before training: likely label errors, near-duplicates, outliers, class overlap.

    Every image is scored by a cross-validated linear head that never saw it (on the backbone's cached
    embeddings); confident learning flags the labels those scores contradict. Writes `audit.json`, a
    self-contained `audit.html` and an editable `review.csv` (for `tlearn train --review`) into `out`
    (default `runs/<data>-audit-<time>`), which must be empty unless `overwrite`.

    Args:
        data: `DATA/<class>/*` or `DATA/{train,val[,test]}/<class>/*`; every split is audited.
        out: the audit folder.
        backbone: the backbone whose embeddings are audited (any name `train` accepts).
        weights: a local weights file for `backbone`.
        overwrite: replace a previous audit in `out` (including an edited review.csv).
        device: auto, cpu, cuda or cuda:N, for embeddings not yet cached.
        settings: thresholds (`tlearn.audits.findings.AuditSettings`); the defaults are the measured ones.
        quiet: no progress bars or status lines.

    Returns:
        The `Audit` (`summary`, `payload` as in audit.json, `review` rows, the file paths).

    Example:
        >>> found = tlearn.audit("data/", out="audits/data")  # doctest: +SKIP
        >>> found.summary["label_issues"], found.review_csv  # doctest: +SKIP
        (7, PosixPath('audits/data/review.csv'))
    """
    from tlearn.audits.folder import audit_folder  # deferred: only audits need it

    if out is None:
        out = _default_out(data, "audit")
    progress = Progress(quiet=quiet)
    return audit_folder(
        data,
        out=Path(out).expanduser(),
        backbone=backbone,
        weights=weights,
        overwrite=overwrite,
        device=device,
        settings=settings,
        progress=progress,
    )


def select(
    data: str | Path,
    *,
    backbones: str | Sequence[str] = ("lite0", "lite1", "lite2"),
    weights: Mapping[str, str | Path] | None = None,
    budget: str | float | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
) -> Selection:
    """Rank candidate backbones on a labelled folder by cross-validated linear-probe accuracy, in seconds
    once embeddings are cached, so `tlearn.train(data, backbone=...)` starts from the right one.

    Only the train and val images are used (the test split stays unseen). For each candidate: out-of-fold
    accuracy of the linear head with a 95% interval, LogME, leave-one-out k-NN accuracy, embedding seconds,
    parameters, size and inference images/s. A candidate without offline weights is listed with the reason
    (pass `weights={name: path}`), not fatal. The ranking is saved for `tlearn train --backbone best`, and as
    select.json and select.html in `out` when given.

    Args:
        data: `DATA/<class>/*` or `DATA/{train,val[,test]}/<class>/*`.
        backbones: names (a list, or one comma-separated string), tried in order.
        weights: local weights files by backbone name.
        budget: stop starting new candidates after this long ("10m", "90s", or seconds).
        out: a folder for select.json and select.html (must be empty unless `overwrite`).
        overwrite: replace a previous selection in `out`.
        device: auto, cpu, cuda or cuda:N.
        quiet: no progress bars or status lines.

    Raises:
        BackboneError: no candidate could be evaluated.

    Example:
        >>> ranking = tlearn.select("data/", backbones="lite0,lite1,lite2", budget="10m")  # doctest: +SKIP
        >>> print(ranking.table())  # doctest: +SKIP
        >>> ranking.winner["name"]  # doctest: +SKIP
        'lite2'
    """
    from tlearn.audits.select import SelectionRequest, parse_budget, select_backbones  # deferred: selections only

    names = [name.strip() for name in (backbones.split(",") if isinstance(backbones, str) else backbones)]
    request = SelectionRequest(
        tuple(name for name in names if name),
        {name: Path(path).expanduser() for name, path in (weights or {}).items()},
        budget_seconds=parse_budget(budget),
    )
    if not request.backbones:
        raise TlearnError("--backbones is empty; name at least one backbone, e.g. lite0,lite1,lite2")
    output = Path(out).expanduser() if out is not None else None
    return select_backbones(
        data, request, out=output, overwrite=overwrite, device=device, progress=Progress(quiet=quiet)
    )
