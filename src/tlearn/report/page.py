"""The run report: one self-contained `report.html` plus its figures as PNG files, next to metrics.json.

It answers a user's first questions after training. Is it good: the metrics read against a trivial
baseline, and whether the confidences can be trusted (calibration). Where does it fail: the confusion
matrix, the per-class table and the worst errors as thumbnails. Was it worth it: what the original ImageNet
model said about the same images, beside what the new classifier says. And what the data was: class counts,
skipped files, duplicates and leakage.

A multi-label run (`task` "multilabel" in metrics.json) has no confusion matrix or calibration: its page shows
mAP, subset accuracy, F1 and Hamming loss, per-class precision–recall curves with each threshold, and the images
whose label sets were most wrong (`tlearn.report.multilabel`). A run with a reject rule (`reject` in a split's
metrics) adds its "Unknown answers": coverage, selective accuracy and the accuracy–coverage curve.

The page embeds its figures and thumbnails (base64) and its CSS, so it opens offline in any browser and can
be mailed as one file. Only the galleries' images are decoded, as small thumbnails. Written from the run's
files alone (`tlearn.runs.records`): the report never runs a model (the "before" answers were saved by
training or evaluation in `imagenet.json`) and never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlearn import __version__
from tlearn.backbones.cache import cache_root
from tlearn.backbones.result_cache import ResultCache, remembered
from tlearn.evaluation.calibration import apply_temperature, reliability_bins
from tlearn.evaluation.intervals import smallest_detectable_difference, wilson_interval
from tlearn.evaluation.metrics import classification_metrics
from tlearn.report.drawing import FigureDrawer
from tlearn.report.multilabel import (
    class_probabilities,
    label_set,
    label_targets,
    multilabel_baseline,
    precision_recall_curves,
    thresholds,
    worst_label_set_rows,
    wrong_label_sets,
)
from tlearn.report.thumbnails import data_uri, thumbnail
from tlearn.runs.layout import IMAGENET_FILE, RunFolder, evaluated_set
from tlearn.runs.records import RunRecords, read_run
from tlearn.runs.summary import TeacherRecord
from tlearn.util import atomic
from tlearn.util.progress import Progress

GALLERY_SIZE = 12  # images per gallery
TOP_ANSWERS = 3  # labels shown per image in the before/after panel
LISTED_FILES = 50  # skipped files, duplicates, ... beyond this are counted, not listed
MAX_CURVES = 24  # precision–recall panels of a multi-label run; beyond, the classes with the lowest AP


def write_report(folder: str | Path, *, progress: Progress | None = None) -> Path:
    """Write `report.html` and `figures/*.png` for a finished run or evaluation folder.

    Args:
        folder: what `tlearn train --out` or `tlearn evaluate --out` wrote.
        progress: status lines.

    Returns:
        The path of report.html.

    Raises:
        TlearnError: the folder holds no finished run or evaluation.

    Example:
        >>> write_report("runs/ants")  # doctest: +SKIP
        PosixPath('runs/ants/report.html')
    """
    progress = progress or Progress(quiet=True)
    started = time.perf_counter()
    records = read_run(folder)
    split = records.split
    rows = records.split_predictions(split)
    with contextlib.closing(ResultCache(cache_root())) as results:
        drawer = FigureDrawer(results)
        figures, task_context = TASK_SECTIONS[records.task.name](records, rows, drawer)
        figures = {**_training_figure(records, drawer), **figures}
        unknown = _unknown_panel(records)
        if unknown and unknown["curve"]:
            figures["accuracy_coverage"] = _unknown_figure(unknown, drawer)
    files = RunFolder(records.folder)
    for name, png in figures.items():
        atomic.write_bytes(files.figure(name), png, durable=False)
    page = render_page(
        "report.html",
        records=records,
        split=split,
        where=evaluated_set(split).description,
        title=records.folder.resolve().name,
        figures={name: data_uri(png, "image/png") for name, png in figures.items()},
        unknown=unknown,
        dataset=_dataset_panel(records),
        choice=_choice_panel(records),
        audit=_audit_panel(records),
        version=__version__,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        **task_context,
    )
    path = files.report
    atomic.write_text(path, page)
    progress.info(f"report: {path} ({time.perf_counter() - started:.1f} s)")
    return path


def _single_label_sections(
    records: RunRecords, rows: list[dict[str, str]], drawer: FigureDrawer
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Figures and page context of a single-label run: confusion, calibration, the worst errors."""

    metrics = records.metrics[records.split]
    labels, probabilities = records.probabilities(rows)
    temperature = records.model_config.temperature if records.model_config else 1.0
    matrix = np.asarray(metrics["confusion_matrix"])
    uncalibrated = (
        reliability_bins(apply_temperature(probabilities, 1 / temperature), labels) if temperature != 1.0 else None
    )
    drawn = {
        "confusion_counts": drawer.draw("confusion_matrix_figure", matrix, records.classes, normalise=False),
        "confusion_normalised": drawer.draw("confusion_matrix_figure", matrix, records.classes, normalise=True),
        "reliability": drawer.draw(
            "reliability_diagram",
            reliability_bins(probabilities, labels),
            uncalibrated=uncalibrated,
            temperature=temperature,
        ),
    }
    context = {
        "multilabel": False,
        "baseline": majority_baseline(records, drawer.results),
        "per_class": _per_class_rows(metrics),
        "calibration": _calibration(labels, probabilities, temperature),
        "worst_errors": [_gallery_item(records, row) for row in worst_errors(rows)],
        "unsure_right": [_gallery_item(records, row) for row in least_confident_right(rows)],
        "errors": sum(row["label"] != row["predicted"] for row in rows),
        "before_after": _before_after(records, rows),
        "resolution": _resolution(metrics),
    }
    return drawn, context


def _multilabel_sections(
    records: RunRecords, rows: list[dict[str, str]], drawer: FigureDrawer
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Figures and page context of a multi-label run: per-class precision–recall, the most wrong label sets."""

    metrics = records.metrics[records.split]
    curves = precision_recall_curves(
        label_targets(rows, records.classes),
        class_probabilities(rows, records.classes),
        thresholds(metrics),
        records.classes,
    )
    drawn_curves = curves
    if len(curves) > MAX_CURVES:  # the classes ranked worst, where a reader has something to look for
        drawn_curves = sorted(curves, key=lambda curve: curve.average_precision)[:MAX_CURVES]
    drawn = {"precision_recall": drawer.draw("precision_recall_figure", drawn_curves)} if curves else {}
    worst = [
        {**item, "thumbnail": thumbnail(records.data_root / item["row"]["path"]), "path": item["row"]["path"]}
        for item in worst_label_set_rows(rows, metrics, GALLERY_SIZE)
    ]
    context = {
        "multilabel": True,
        "baseline": multilabel_baseline(metrics, rows),
        "per_class": _per_class_rows(metrics),
        "curves": {
            "drawn": len(drawn_curves),
            "classes": len(curves),
            "without_positives": [name for name in records.classes if name not in {curve.name for curve in curves}],
        },
        "worst_sets": worst,
        "errors": wrong_label_sets(rows),
        "before_after": _before_after(records, rows, class_thresholds=thresholds(metrics)),
        "resolution": _resolution(metrics, measure="subset accuracy"),
    }
    return drawn, context


# The sections that differ between the tasks, by `Task.name`: a multi-label run has no confusion matrix or
# calibration, but precision–recall curves per class and the most wrong label sets.
TASK_SECTIONS = {"multiclass": _single_label_sections, "multilabel": _multilabel_sections}


def majority_baseline(records: RunRecords, results: ResultCache | None = None) -> dict[str, Any]:
    """What always answering the most common class scores on the evaluated split (its metrics read from
    `results` when they were computed before).

    The most common class is taken from the training split when the run knows it (a trivial classifier
    learns nothing else), else from the evaluated split itself (the best any constant answer can do).
    """
    split = records.split
    classes = records.classes
    support = np.asarray(records.metrics[split]["confusion_matrix"]).sum(axis=1)  # (C,) true images per class
    train_counts = records.data_report.get("counts", {}).get("train")
    if train_counts:
        majority, source = classes.index(max(train_counts, key=train_counts.get)), "the training split"
    else:
        majority, source = int(support.argmax()), evaluated_set(split).description
    labels = np.repeat(np.arange(len(classes)), support)
    constant = np.eye(len(classes))[np.full(len(labels), majority)]
    compute = lambda: classification_metrics(labels, constant, classes)  # noqa: E731
    metrics = remembered(results, "baseline metrics", compute, labels, constant, classes)
    return {
        "class": classes[majority],
        "source": source,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "chance": 1 / len(classes),
    }


def _resolution(metrics: dict[str, Any], *, measure: str = "accuracy") -> str | None:
    """Plain words on what this many images can tell apart (from the 95% Wilson interval's half width);
    `measure` names the share of images right (a multi-label run's accuracy is its subset accuracy)."""
    n = metrics.get("n", 0)
    if not n or "accuracy" not in metrics:
        return None
    margin = smallest_detectable_difference(n, metrics["accuracy"])
    sentence = (
        f"With {n} images the true {measure} could be {100 * margin:.1f} points either side of this figure, so two "
        f"models measured here whose {measure} differs by less than about that cannot be told apart."
    )
    if n < 100:
        sentence += " That is too few images to rank close models: judge them on more data."
    return sentence


def _audit_panel(records: RunRecords) -> dict[str, Any] | None:
    """What the run's data audit found: counts, the likeliest label errors as thumbnails, conflicting or
    leaking near-duplicates and the classes hardest to tell apart (from audit.json; none for an evaluation)."""
    audit = records.audit
    if not audit:
        return None
    if "summary" not in audit:
        return {"reason": audit.get("reason", "no audit"), "summary": None}
    issues = []
    for row in audit.get("label_issues", [])[:GALLERY_SIZE]:
        issues.append({**row, "thumbnail": thumbnail(records.data_root / row["path"])})
    duplicates = [
        group for group in audit.get("near_duplicates", []) if group["conflicting_labels"] or group["cross_split"]
    ]
    return {
        "reason": None,
        "summary": audit["summary"],
        "issues": issues,
        "duplicates": duplicates[:LISTED_FILES],
        "overlap": audit.get("class_overlap", [])[:5],
    }


FINAL_FIT_SENTENCES = {
    "train+val": "The shipped model was then fitted again on train + val, with the same settings.",
    "all": "The shipped model was then fitted again on every image, test split included, after the test split "
    "had been measured: the test figures describe the model before that last fit.",
    "train": "The shipped model is the one fitted on the training split (--final-fit train).",
}


def _choice_panel(records: RunRecords) -> dict[str, Any] | None:
    """Linear head against fine-tuning: what each scored on the same validation images and which was kept."""
    summary = records.summary
    if summary is None or summary.head is None or (summary.selection is None and summary.finetune_skipped is None):
        return None  # nothing was chosen (an evaluation, or a run written by hand)
    final = FINAL_FIT_SENTENCES.get(summary.final_fit or "", "")
    backbones = {"backbones": summary.backbone_trials, "backbone_reason": summary.backbone_choice}
    head, selection, tuned = summary.head, summary.selection, summary.finetune
    if selection is None or tuned is None:
        lead = f"The linear head was kept; fine-tuning did not run: {summary.finetune_skipped}."
        return {"lead": lead, "rows": [], "final": final, **backbones}
    rows = [
        {
            "name": f"linear head (C = {head.c}, cross-validated)",
            "images": selection.images,
            "right": round(selection.linear_accuracy * selection.images),
            "accuracy": selection.linear_accuracy,
            "loss": selection.linear_loss,
            "seconds": head.seconds,
            "kept": selection.kept == "linear",
        },
        {
            "name": f"fine-tuned ({tuned.epochs} epochs, best epoch {tuned.best_epoch})",
            "images": selection.images,
            "right": round(selection.finetune_accuracy * selection.images),
            "accuracy": selection.finetune_accuracy,
            "loss": selection.finetune_loss,
            "seconds": tuned.seconds,
            "kept": selection.kept == "finetune",
        },
    ]
    teacher = summary.teacher
    if teacher is not None and "val" in teacher.accuracy:
        rows.append(
            {
                "name": f"teacher: {teacher.backbone} {teacher.mode} (learnt from, not shipped)",
                "images": selection.images,
                "right": round(teacher.accuracy["val"] * selection.images),
                "accuracy": teacher.accuracy["val"],
                "loss": None,
                "seconds": teacher.seconds,
                "kept": False,
            }
        )
    for row in rows:  # each candidate's accuracy on these images, with its 95% Wilson interval
        row["interval"] = wilson_interval(row["right"], row["images"])
    reason = selection.reason
    lead = f"Both candidates were scored on the same validation images. {reason[0].upper()}{reason[1:]}."
    if selection.kept != selection.chosen:
        lead += " The fine-tuned network was kept because --mode finetune asked for it."
    if teacher is not None:
        lead += f" {_teacher_sentence(teacher)}"
    return {"lead": lead, "rows": rows, "final": final, **backbones}


def _teacher_sentence(teacher: TeacherRecord) -> str:
    """What the fine-tuned network learnt from besides the labels, and how the teacher did on the test images."""
    unlabelled = f" and on {teacher.unlabelled_images} unlabelled images" if teacher.unlabelled_images else ""
    test = teacher.accuracy.get("test")
    scored = f" The teacher answered {test:.1%} of the test images right." if test is not None else ""
    return (
        f"Fine-tuning learnt {1 - teacher.share:.0%} from the labels and {teacher.share:.0%} from the answers of "
        f"the teacher {teacher.model}{unlabelled}.{scored}"
    )


def worst_errors(rows: list[dict[str, str]], count: int = GALLERY_SIZE) -> list[dict[str, str]]:
    """The wrong answers given with the highest confidence, most confident first."""
    wrong = [row for row in rows if row["label"] != row["predicted"]]
    return sorted(wrong, key=lambda row: -float(row["confidence"]))[:count]


def least_confident_right(rows: list[dict[str, str]], count: int = GALLERY_SIZE) -> list[dict[str, str]]:
    """The right answers given with the lowest confidence, least confident first."""
    right = [row for row in rows if row["label"] == row["predicted"]]
    return sorted(right, key=lambda row: float(row["confidence"]))[:count]


def _training_figure(records: RunRecords, drawer: FigureDrawer) -> dict[str, bytes]:
    """The training curves: per epoch for a fine-tuned run, against the L2 strengths tried for a linear head."""

    summary = records.summary
    if summary is None:
        return {}
    if len(records.history) > 1:
        best_epoch = summary.finetune.best_epoch if summary.finetune else None
        drawn = {"training_curves": drawer.draw("training_curves", records.history, best_epoch=best_epoch)}
        if any(row.get("cpu_percent") is not None for row in records.history):
            drawn["hardware"] = drawer.draw("hardware_curves", records.history)
        return drawn
    if summary.head is not None and summary.head.candidates:
        rows = [row.model_dump() for row in summary.head.candidates]
        return {"training_curves": drawer.draw("head_search_curves", rows, summary.head.c)}
    return {}


def _unknown_panel(records: RunRecords) -> dict[str, Any] | None:
    """The reject rule ("unknown" answers): each split's coverage and accuracy, what the threshold was chosen
    for, and the accuracy–coverage curve of the judged split (of val when the judged split has none: the
    cross-validation of a run without a test split); None for a model that always answers."""
    splits = [{"split": name, **values["reject"]} for name, values in records.metrics.items() if values.get("reject")]
    if not splits:
        return None
    judged = next((row for row in splits if row["split"] == records.split), splits[0])
    rule = records.model_config.reject if records.model_config else None
    curve = judged.get("curve") or {}
    where = (
        "these images"
        if judged["split"] == records.split
        else f"the images of {evaluated_set(judged['split']).description}"
    )
    headline = f"With its reject rule the model answered {_percent(judged.get('coverage'))} of {where}"
    if judged.get("selective_accuracy") is not None:
        headline += (
            f" and said “unknown” for the rest; {_percent(judged['selective_accuracy'])} of its answers were right"
        )
    return {
        "splits": splits,
        "judged": judged,
        "where": evaluated_set(judged["split"]).description,
        "headline": headline,
        "score": _reject_score_words(judged.get("score") or (rule.score if rule else None), rule.k if rule else None),
        "target": dict(rule.target) if rule else {},
        "purpose": reject_purpose(dict(rule.target) if rule else {}),
        "curve": curve if curve.get("coverage") else None,
    }


def _unknown_figure(unknown: dict[str, Any], drawer: FigureDrawer) -> bytes:
    judged = unknown["judged"]
    chosen = (judged.get("coverage"), judged.get("selective_accuracy"))
    return drawer.draw(
        "accuracy_coverage_figure",
        unknown["curve"]["coverage"],
        unknown["curve"]["accuracy"],
        chosen=chosen if None not in chosen else None,
        accuracy_all=judged.get("accuracy_all"),
        target=unknown["target"],
    )


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def reject_purpose(target: dict[str, float]) -> str:
    """One sentence on what the reject threshold was chosen for (`RejectRule.target`).

    Example:
        >>> reject_purpose({"accuracy": 0.95})
        'The threshold was chosen on the validation images to keep 95.0% accuracy on the images answered.'
    """
    aims = []
    if "accuracy" in target:
        aims.append(f"to keep {100 * target['accuracy']:.1f}% accuracy on the images answered")
    if "coverage" in target:
        aims.append(f"to answer {100 * target['coverage']:.1f}% of the images")
    if not aims:
        return "What the threshold was chosen for was not recorded with the model."
    return f"The threshold was chosen on the validation images {' and '.join(aims)}."


def _reject_score_words(score: str | None, k: int | None) -> str:
    if score == "knn":
        return "the similarity of the image's embedding to its k-th nearest training embedding" + (
            f" (k = {k})" if k else ""
        )
    if score == "confidence":
        return "the probability of the most probable class"
    return f"its {score or 'reject'} score"


def _calibration(labels: np.ndarray, probabilities: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE of the model as saved and, for a calibrated model, of the same model before temperature scaling."""
    before = None
    if temperature != 1.0:
        # The saved probabilities are softmax(z / T); scaling their logs back by T recovers softmax(z).
        before = reliability_bins(apply_temperature(probabilities, 1 / temperature), labels).ece
    return {"temperature": temperature, "ece": reliability_bins(probabilities, labels).ece, "ece_before": before}


def _per_class_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    """classification_report's table: one row per class, then the macro and support-weighted averages.

    A multi-label run's rows also carry `ap` (None for a class without positive images, left out of its
    averages: the macro average of AP is the mAP) and `threshold`.
    """
    rows = [{"name": name, **values} for name, values in metrics["per_class"].items()]
    support = np.array([row["support"] for row in rows], dtype=float)
    keys = [key for key in ("ap", "precision", "recall", "f1") if rows and key in rows[0]]
    averages = []
    for name, weights in (("macro average", np.ones_like(support)), ("weighted average", support)):
        average: dict[str, Any] = {"name": name, "support": int(support.sum())}
        for key in keys:
            scored = [(row[key], weight) for row, weight in zip(rows, weights, strict=True) if row[key] is not None]
            total = sum(weight for _, weight in scored)
            average[key] = float(sum(value * weight for value, weight in scored) / total) if total else None
        averages.append(average)
    return {"rows": rows, "averages": averages}


def _gallery_item(records: RunRecords, row: dict[str, str]) -> dict[str, Any]:
    return {
        "path": row["path"],
        "label": row["label"],
        "predicted": row["predicted"],
        "confidence": float(row["confidence"]),
        "p_true": float(row[f"p_{row['label']}"]),
        "thumbnail": thumbnail(records.data_root / row["path"]),
    }


def _before_after(
    records: RunRecords, rows: list[dict[str, str]], *, class_thresholds: list[float] | None = None
) -> dict[str, Any]:
    """Sample images: the original ImageNet model's top labels (saved with the run) beside the new classifier's.

    Each of the classifier's answers is marked right, wrong or neither: for a single-label run its first
    answer only; for a multi-label run (`class_thresholds` given) every answer that reaches its threshold,
    right when the image carries that label.
    """
    answers = records.imagenet.get("answers")
    if not answers:
        reason = records.imagenet.get("reason") or f"no ImageNet answers were saved with this run ({IMAGENET_FILE})"
        return {"samples": [], "reason": reason}
    by_path = {row["path"]: row for row in rows}
    items = []
    for path, answer in answers.items():
        row = by_path.get(path)
        if row is None:
            continue
        ranked = sorted(records.classes, key=lambda name: -float(row[f"p_{name}"]))[:TOP_ANSWERS]
        if class_thresholds is None:
            given = [row["label"]]
            marks = ["right" if ranked[0] == row["label"] else "wrong"] + [""] * (len(ranked) - 1)
        else:
            given = label_set(row["label"])
            threshold = dict(zip(records.classes, class_thresholds, strict=True))
            marks = [
                ("right" if name in given else "wrong") if float(row[f"p_{name}"]) >= threshold[name] else ""
                for name in ranked
            ]
        items.append(
            {
                "path": row["path"],
                "label": ", ".join(given) or "no label",
                "thumbnail": thumbnail(records.data_root / row["path"]),
                "imagenet": [(name, float(probability)) for name, probability in answer],
                "after": [(name, float(row[f"p_{name}"]), mark) for name, mark in zip(ranked, marks, strict=True)],
            }
        )
    return {"samples": items, "reason": None}


def _dataset_panel(records: RunRecords) -> dict[str, Any]:
    report = records.data_report
    counts = report.get("counts", {})
    splits = list(counts)
    table = [
        {
            "name": name,
            "counts": [counts[split].get(name, 0) for split in splits],
            "total": sum(counts[split].get(name, 0) for split in splits),
        }
        for name in records.classes
    ]
    leaked = sum(len(group["excluded"]) for group in report.get("leakage", []))
    return {
        "data": report.get("data", ""),
        "splits": splits,
        "table": table,
        "split_totals": [sum(counts[split].values()) for split in splits],
        "imbalance": report.get("imbalance"),
        "skipped": report.get("skipped", [])[:LISTED_FILES],
        "skipped_count": len(report.get("skipped", [])),
        "ignored": report.get("ignored", [])[:LISTED_FILES],
        "ignored_count": len(report.get("ignored", [])),
        "duplicates": report.get("duplicates", [])[:LISTED_FILES],
        "duplicates_count": len(report.get("duplicates", [])),
        "leakage": report.get("leakage", [])[:LISTED_FILES],
        "leaked_count": leaked,
        "label_conflicts": report.get("label_conflicts", [])[:LISTED_FILES],
        "checked": "duplicates" in report,  # an evaluation does not look for duplicates
    }


@functools.cache
def _environment():  # -> jinja2.Environment
    import jinja2  # deferred: only reports need templates

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("tlearn.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["pct"] = lambda value, digits=1: "–" if value is None else f"{100 * value:.{digits}f}%"
    environment.filters["num"] = lambda value, digits=3: "–" if value is None else f"{value:.{digits}f}"
    environment.filters["megabytes"] = lambda value: "–" if value is None else f"{value / 1e6:.1f} MB"
    return environment


def render_page(template: str, **context: Any) -> str:
    """Render a page template of `tlearn/templates` (autoescaped HTML that includes the shared CSS)."""
    return _environment().get_template(template).render(**context)
