"""The one front door: train, load, evaluate, predict, export, serve, push, demo, audit and select.

Every `tlearn` command is a thin wiring over exactly one of these functions, and each of them has one
implementation behind it (the pipeline, the engines, `evaluation.folder`, `deploy.export`, `deploy.serving`,
the audits). Making a model and checking data live here; using a trained model (`load` and the `Model` it
returns, `evaluate`, `predict`, `export`, `push`, `serve`) in `tlearn.api.inference`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlearn.api.inference import (
    Model,
    evaluate,
    export,
    export_model,
    load,
    predict,
    predict_on_ray,
    push,
    serve,
)
from tlearn.api.train_config import default_out, resolve_train_config
from tlearn.config import TrainConfig
from tlearn.data.tables import is_dataframe, is_table, table_label_file
from tlearn.errors import TlearnError
from tlearn.pipeline import Run, run_training
from tlearn.util.progress import Progress

if TYPE_CHECKING:
    from tlearn.audits.findings import AuditSettings
    from tlearn.audits.folder import Audit
    from tlearn.audits.select import Selection

__all__ = [
    "Model",
    "audit",
    "demo",
    "evaluate",
    "export",
    "export_model",
    "load",
    "predict",
    "predict_on_ray",
    "push",
    "select",
    "serve",
    "train",
]


def train(
    data: str | Path | Any = None,
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
        data: `DATA/<class>/*`, `DATA/{train,val[,test]}/<class>/*`, a label file, a pandas DataFrame with
            `path` and `label` (and optionally `split`) columns, or a Hugging Face `datasets` image dataset
            (`Dataset` or `DatasetDict`); a table is written once as a label file under the cache
            (`tlearn.data.tables`).
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
    if resume and out is None:
        raise TlearnError("--resume needs --out: the run directory to continue")
    if is_table(data):
        from tlearn.backbones.cache import cache_root

        if is_dataframe(data):
            settings = {**settings, "follow_links": True}  # the user's own code named these images
        data = table_label_file(data, cache_root())
    resume_dir = Path(out) if resume and out is not None else None
    resolved = resolve_train_config(config, {"data": data, **settings}, resume_dir=resume_dir)
    if out is None:
        out = default_out(resolved.data, resolved.mode)
    return run_training(resolved, out=out, overwrite=overwrite, resume=resume, progress=Progress(quiet=quiet))


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
        out = default_out(data, "audit")
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
        data: `DATA/<class>/*`, `DATA/{train,val[,test]}/<class>/*`, a label file, a pandas DataFrame with
            `path` and `label` (and optionally `split`) columns, or a Hugging Face `datasets` image dataset
            (`Dataset` or `DatasetDict`); a table is written once as a label file under the cache
            (`tlearn.data.tables`).
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
