"""The one `TrainConfig` a `tlearn.train` call means, and where results go when no folder is named.

Settings arrive as a config object or file plus keywords. A resumed run keeps the configuration it started
with (settings given again must agree, or the run would silently change halfway), and `--backbone best` becomes
the winner of the last `tlearn select` on the data. Deciding that once, here, lets the pipeline take one
finished, typed config.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from tlearn.config import TrainConfig, build_config, load_config_file
from tlearn.errors import RunDirError, TlearnError
from tlearn.runs.layout import RunFolder


def resolve_train_config(
    config: TrainConfig | str | Path | None, given: dict[str, Any], *, resume_dir: Path | None = None
) -> TrainConfig:
    """Defaults ← `config` (a `TrainConfig`, or a YAML/JSON file) ← `given` settings (None: not given).

    Args:
        config: the base configuration, if any.
        given: `TrainConfig` fields given as keywords (`data` included).
        resume_dir: the run being resumed: its saved configuration is used, and every setting given (in
            `config` or `given`) must agree with it.

    Raises:
        TlearnError: the settings do not make a valid configuration.
        RunDirError: nothing to resume in `resume_dir`, or a setting disagrees with the saved one.

    Example:
        >>> resolved = resolve_train_config(TrainConfig(data="data/", epochs=5), {"data": None, "epochs": 3})
        >>> resolved.data.name, resolved.epochs
        ('data', 3)
    """
    if isinstance(config, TrainConfig):
        base = config.model_dump()
    elif config is not None:
        base = load_config_file(config)
    else:
        base = {}
    if resume_dir is not None:
        return _saved_config_agreeing_with(resume_dir, {**base, **given})
    resolved = build_config(base, **given)
    return _best_backbone(resolved) if resolved.backbone == "best" else resolved


def default_out(data: str | Path, kind: str) -> Path:
    """runs/<data folder or label file's stem>-<kind>-<time>: where results go when no --out is given.

    Example:
        >>> default_out("data/ants", "linear").as_posix()  # doctest: +ELLIPSIS
        'runs/ants-linear-...'
    """
    source = Path(data).expanduser().resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{source.stem if source.is_file() else source.name}-{kind}-{stamp}"


def _best_backbone(config: TrainConfig) -> TrainConfig:
    """`--backbone best`: the winner of the last `tlearn select` on this data folder, recorded in the config."""
    from tlearn.audits.select import best_backbone  # deferred: only `--backbone best` reads the selection

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
