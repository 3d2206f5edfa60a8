"""Sharing a model on the Hugging Face Hub: the folder that goes up (with a model card written from the run), the
upload, and loading a pushed model by name.

`stage_model` writes exactly what is uploaded: the model directory's own files (weights, `config.json`, the
reject rule's reference embeddings when the model has one), the run's `metrics.json` and `run.json` for
provenance, and `README.md`, the model card: classes, figures with their 95% intervals, what the figures were
measured on, preprocessing, how it was trained and how to load it. `push_model` uploads such a folder with
huggingface_hub; `tlearn push RUN REPO --local DIR` stops before the upload, so what would go up can be read and
loaded back (`tlearn evaluate DIR DATA` scores it like the run).

Loading a pushed model by its `hf-hub:` name is `tlearn.runs.hub_models`' job.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tlearn import __version__
from tlearn.errors import TlearnError
from tlearn.evaluation.intervals import wilson_interval
from tlearn.runs.hub_models import CARD_FILE, MODEL_FILES, PROVENANCE_FILES, HubReference
from tlearn.runs.layout import METRICS_FILE, SUMMARY_FILE
from tlearn.runs.model_dir import MODEL_DIR, ModelConfig, model_folder, read_config
from tlearn.runs.summary import RunSummary, read_run_summary
from tlearn.util import atomic
from tlearn.util.text import first_line
from tlearn.util.wording import option

STAGED_MARKER = ".tlearn-push.json"  # in a folder `push --local` wrote: what --overwrite may replace
SPLIT_NAMES = {"val": "validation split", "test": "test split", "cv": "train + val, out of fold"}


def stage_model(run: str | Path, out: str | Path, *, repo_id: str, overwrite: bool = False) -> Path:
    """Write the folder that `push_model` uploads: the model's files, the run's records and the model card.

    Args:
        run: a run directory, or a model directory (its card then has only the figures the model carries).
        out: the folder to write; an existing one is replaced only with `overwrite` and only if tlearn wrote it.
        repo_id: the Hub repository the card tells users to load from.

    Raises:
        ModelFileError: `run` holds no complete tlearn model.
        TlearnError: `out` exists and may not be replaced.
    """
    repo_id = HubReference.parse(repo_id).repo_id
    folder = model_folder(run)
    config = read_config(folder)
    run_dir = folder.parent if folder.name == MODEL_DIR else folder
    out = Path(out).expanduser()
    _check_target(out, overwrite=overwrite)
    linked = [
        path
        for path in (*(folder / n for n in MODEL_FILES), *(run_dir / n for n in PROVENANCE_FILES))
        if path.is_symlink()
    ]
    if linked:  # a link would upload whatever file it points at
        raise TlearnError(f"{linked[0]}: a symbolic link; copy the file it points at into place to share it")
    records = {name: _read_json(run_dir / name) for name in PROVENANCE_FILES}
    summary = _read_summary(run_dir / SUMMARY_FILE) if records[SUMMARY_FILE] is not None else None
    with atomic.replace_directory(out) as staging:
        for name in MODEL_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, staging / name)
        for name, record in records.items():
            if record is not None:
                shutil.copyfile(run_dir / name, staging / name)
        card = model_card(config, records[METRICS_FILE], summary, repo_id=repo_id)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        (staging / STAGED_MARKER).write_text(json.dumps({"repo_id": repo_id, "tlearn_version": __version__}) + "\n")
    return out


def push_model(
    run: str | Path, repo_id: str, *, private: bool = False, token: str | None = None, message: str | None = None
) -> str:
    """Stage the model (`stage_model`) in a temporary folder and upload it; returns the repository's URL.

    Raises:
        TlearnError: the upload failed (no network, no token, no permission), in one line.
    """
    import tempfile

    from huggingface_hub import HfApi  # deferred: only pushing needs it

    with tempfile.TemporaryDirectory(prefix="tlearn-push-") as scratch:
        staged = stage_model(run, Path(scratch) / "model", repo_id=repo_id)
        (staged / STAGED_MARKER).unlink()
        api = HfApi(token=token)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id, folder_path=staged, commit_message=message or f"Upload a tlearn {__version__} model"
            )
        except Exception as error:  # network, token, permission: all end the command
            raise TlearnError(f"{repo_id}: the upload to the Hub failed ({first_line(error)})") from None
    return str(url)


def model_card(config: ModelConfig, metrics: dict[str, Any] | None, summary: RunSummary | None, *, repo_id: str) -> str:
    """The model card (README.md with the Hub's YAML header) for a model's config and its run's records.

    Accuracy intervals are 95% Wilson intervals from the figure and its image count; macro F1 intervals are the
    run's bootstrap ones when its metrics.json travelled with it.
    """
    classes = config.classes
    prep = config.preprocessing_spec()
    lines = [
        "---",
        "library_name: tlearn",
        "pipeline_tag: image-classification",
        "tags:",
        "- image-classification",
        "- tlearn",
        "- timm",
        "---",
        "",
        f"# {repo_id.rsplit('/', 1)[-1]}",
        "",
        f"A {config.task_type.title} image classifier over {len(classes)} classes, trained "
        f"with [tlearn](https://pypi.org/project/tlearn/) {config.tlearn_version} on "
        f"`{config.arch}` ({config.backbone.get('weights', 'weights of unknown origin')}). "
        + _loading_line(config, len(classes)),
        "",
        "## Classes",
        "",
        ", ".join(f"`{name}`" for name in classes),
        "",
        "## Evaluation",
        "",
        *_figures(config.metrics, metrics or {}),
        "",
        "## Preprocessing",
        "",
        f"- input {list(prep.input_size)} pixels, resized with {prep.interpolation} interpolation, "
        f"crop `{prep.crop_mode}` (crop share {prep.crop_pct})",
        f"- normalised with mean {list(prep.mean)} and std {list(prep.std)} on pixels in [0, 1]",
        f"- calibration temperature {config.temperature:.3g}"
        + (f'; answers "unknown" by the {config.reject.score} rule' if config.reject else ""),
        "",
        "## Training",
        "",
        *_training(config, summary),
        "",
        "## Use",
        "",
        "```bash",
        "pip install tlearn",
        f"tlearn predict hf-hub:{repo_id} photos/",
        f"tlearn serve hf-hub:{repo_id}",
        "```",
        "",
        "```python",
        "import tlearn",
        "",
        f'model = tlearn.load("hf-hub:{repo_id}")',
        'model.predict("photo.jpg")  # the answer, its class and probabilities',
        'model.predict_proba(["a.jpg", "b.jpg"])  # (2, classes) in model.classes order',
        "```",
        "",
    ]
    return "\n".join(lines)


def _figures(headline: dict[str, dict[str, float]], metrics: dict[str, Any]) -> list[str]:
    """The evaluation table: one row per evaluated set, accuracy and macro F1 with 95% intervals."""
    rows = []
    for split, figures in headline.items():
        n = int(figures.get("n", 0))
        if not n or "accuracy" not in figures:
            continue
        accuracy = figures["accuracy"]
        low, high = wilson_interval(round(accuracy * n), n)
        f1 = figures.get("macro_f1")
        f1_interval = (metrics.get(split) or {}).get("macro_f1_interval")
        f1_text = (
            "" if f1 is None else f"{f1:.3f}" + (f" ({f1_interval[0]:.3f}–{f1_interval[1]:.3f})" if f1_interval else "")
        )
        rows.append(f"| {SPLIT_NAMES.get(split, split)} | {n} | {accuracy:.1%} ({low:.1%}–{high:.1%}) | {f1_text} |")
    if not rows:
        return ["No evaluation figures travelled with this model."]
    return [
        "| images | n | accuracy (95% interval) | macro F1 (95% interval) |",
        "|---|---|---|---|",
        *rows,
        "",
        "The figures were measured on images the evaluated model never learnt from; a model refitted afterwards "
        "on more images (see Training) was not measured again.",
    ]


def _training(config: ModelConfig, summary: RunSummary | None) -> list[str]:
    """How the model was made, from the run's record when it travelled with the model."""
    lines = [f"- {'fine-tuned network' if config.mode == 'finetune' else 'linear head on frozen embeddings'}"]
    if summary is None:
        return lines
    if summary.backbone_choice:
        lines.append(f"- backbone: {summary.backbone_choice}")
    if summary.selection is not None:
        lines.append(f"- kept: {summary.selection.reason}")
    if summary.teacher is not None:  # its backbone and kind only: a local teacher's path is the user's business
        teacher, test = summary.teacher, summary.teacher.accuracy.get("test")
        scored = f"; the teacher answered {test:.1%} of the test images right" if test is not None else ""
        lines.append(
            f"- taught by a {teacher.backbone} {teacher.mode} model ({teacher.share:.0%} of the fine-tuning "
            f"targets were its answers){scored}"
        )
    if summary.final_fit:
        lines.append(f"- the shipped model learnt from: {summary.final_fit} images")
    if summary.seconds:
        lines.append(f"- training took {summary.seconds:.0f} s")
    return lines


def _check_target(out: Path, *, overwrite: bool) -> None:
    """Refuse to replace a folder that holds anything unless --overwrite and it is one `stage_model` wrote."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TlearnError(f"{out}: exists and is not a folder; choose another {option('local', '...')}")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise TlearnError(
            f"{out}: already exists; choose another {option('local', '...')} or pass {option('overwrite')}"
        )
    if not (out / STAGED_MARKER).is_file():
        raise TlearnError(f"{out}: was not written by `tlearn push --local`, so {option('overwrite')} leaves it alone")


def _read_summary(path: Path) -> RunSummary | None:
    """The run's record, or None when it does not validate (the card then says less)."""
    try:
        return read_run_summary(path)
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """A run record, or None when it is missing or unreadable (the card then says less)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def _loading_line(config: ModelConfig, classes: int) -> str:
    """How the weights load outside tlearn: into timm's network, or, pruned, into one narrowed to their shapes."""
    built = f"`timm.create_model({config.arch!r}, num_classes={classes})`"
    if config.pruned is None:
        return (
            f"It is a plain timm model: `model.safetensors` loads into {built}; `config.json` holds the class "
            "order and preprocessing."
        )
    return (
        f"It is a timm model with channels pruned ({config.pruned:g}x less compute per image): its layers are "
        f"narrower than {built}'s, so load it with `tlearn.load` (or resize each layer to the stored shapes "
        "first); `config.json` holds the class order and preprocessing."
    )
