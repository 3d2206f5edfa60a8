"""The Python API's entry points; the CLI is a thin layer over these."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlearn.config import TrainConfig, build_config, load_config_file
from tlearn.progress import Progress
from tlearn.training import Run, run_training

if TYPE_CHECKING:
    from tlearn.classifier import Classifier
    from tlearn.evaluation import Evaluation


def train(
    data: str | Path | None = None,
    *,
    out: str | Path | None = None,
    config: TrainConfig | str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    **settings: Any,
) -> Run:
    """Train and evaluate a classifier on a folder of labelled images.

    Args:
        data: `DATA/<class>/*` or `DATA/{train,val[,test]}/<class>/*`.
        out: run directory (default `runs/<data>-<mode>-<time>`); must be empty unless `overwrite`.
        config: a `TrainConfig`, or a YAML/JSON file of settings; keyword `settings` override it.
        overwrite: replace the outputs of a previous run in `out`.
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
    resolved = build_config(base, data=data, **settings)
    if out is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{Path(resolved.data).resolve().name}-{resolved.mode}-{stamp}"
    return run_training(resolved, out=out, overwrite=overwrite, progress=Progress(quiet=quiet))


def load(path: str | Path, *, device: str = "auto") -> Classifier:
    """Load a trained model (its directory, or the run directory that holds it).

    Example:
        >>> clf = load("runs/first")  # doctest: +SKIP
        >>> [p.label for p in clf.predict(["ant.jpg", "bee.jpg"])]  # doctest: +SKIP
    """
    from tlearn.classifier import Classifier

    return Classifier.load(path, device=device)


def evaluate(
    model: str | Path | Classifier,
    data: str | Path,
    *,
    out: str | Path | None = None,
    split: str | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> Evaluation:
    """Evaluate a model on a labelled folder (its test split when pre-split); optionally write `out/metrics.json`.

    Example:
        >>> evaluate("runs/first", "holdout/", out="runs/first/holdout").metrics  # doctest: +SKIP
    """
    from tlearn.classifier import Classifier
    from tlearn.evaluation import evaluate_folder

    classifier = model if isinstance(model, Classifier) else Classifier.load(model, device=device)
    return evaluate_folder(classifier, data, split=split, out=out, progress=Progress(quiet=quiet))
