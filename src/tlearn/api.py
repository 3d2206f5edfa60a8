"""The Python API's entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlearn.config import TrainConfig, build_config, load_config_file
from tlearn.errors import RunDirError, TlearnError
from tlearn.progress import Progress
from tlearn.training import Run, run_training

if TYPE_CHECKING:
    from tlearn.evaluation import Evaluation
    from tlearn.inference import InferenceEngine


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
        overwrite: replace the outputs of a previous run in `out`.
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
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{Path(resolved.data).resolve().name}-{resolved.mode}-{stamp}"
    return run_training(resolved, out=out, overwrite=overwrite, resume=resume, progress=Progress(quiet=quiet))


def _saved_config_agreeing_with(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The run's saved configuration, after checking that every setting given again agrees with it."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise RunDirError(f"{run_dir}: no run to resume (config.yaml not found)")
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


def load(path: str | Path, *, device: str = "auto", engine: str | None = None) -> InferenceEngine:
    """Load a trained model: its directory (or the run directory that holds it) on PyTorch, or an exported
    `.onnx` file on onnxruntime; `engine` ("torch" or "onnx") defaults to the file type.

    Example:
        >>> clf = load("runs/first")  # doctest: +SKIP
        >>> [p.label for p in clf.predict(["ant.jpg", "bee.jpg"])]  # doctest: +SKIP
    """
    from tlearn.inference import load_engine

    return load_engine(path, engine=engine, device=device)


def evaluate(
    model: str | Path | InferenceEngine,
    data: str | Path,
    *,
    out: str | Path | None = None,
    split: str | None = None,
    device: str = "auto",
    tta: bool = False,
    quiet: bool = False,
) -> Evaluation:
    """Evaluate a model on a labelled folder (its test split when pre-split).

    With `out`, writes metrics.json, predictions.csv and report.html there; `tta` adds flip test-time
    augmentation.

    Example:
        >>> evaluate("runs/first", "holdout/", out="runs/first/holdout").metrics  # doctest: +SKIP
    """
    from tlearn.inference import InferenceEngine, load_engine

    classifier = model if isinstance(model, InferenceEngine) else load_engine(model, device=device)
    return classifier.evaluate(data, out=out, split=split, tta=tta, quiet=quiet)
