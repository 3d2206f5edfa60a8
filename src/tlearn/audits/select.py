"""`tlearn select DATA --backbones lite0,lite1,...`: rank candidate backbones on the user's own data, fast.

For each candidate in turn: embed the development images (train + val; the test split is never looked at,
so choosing a backbone cannot bias the final test score) through the cache, then

* cross-validated linear-probe accuracy: the out-of-fold accuracy of tlearn's own linear head
  (`training.head.select_c`), what `tlearn train` in linear mode would reach, with a 95% Wilson interval,
  averaged over `PROBE_REPEATS` draws of the folds (on a few hundred images one draw moves the accuracy by
  1–2 points, as much as the backbones differ; averaging three made the ranking agree with the test split's
  on mri, where one draw did not — benchmarks/bench_select.py);
* two fast scores that train nothing: LogME and leave-one-out k-NN accuracy (`audit.transferability`);
* what the backbone costs: embedding seconds, parameters and fp32 size, inference images per second
  (timed on random pixels at the backbone's input size, batch 16, on the chosen device).

Candidates are ranked by probe accuracy (ties: lower out-of-fold log-loss); McNemar's test against the winner
on the same images says which others are statistically indistinguishable. A candidate whose weights are not
available offline (a hub download without internet, an extra not installed) is listed with the reason and
the `--weights` hint instead of stopping the selection; a time budget stops adding candidates once spent.

The ranking is saved as select.json (with `--out`) and, always, as the selection record of the data folder in
the cache (`<cache>/selections/`), which `tlearn train DATA --backbone best` reads through `best_backbone`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.audits.embedded import EmbeddedImages, embed_source
from tlearn.audits.page import write_select_page
from tlearn.audits.transferability import knn_accuracy, logme
from tlearn.backbones.cache import cache_root
from tlearn.backbones.features import FeatureExtractor
from tlearn.backbones.registry import BackboneRef, StoredBackbone, resolve_backbone
from tlearn.data.discovery import DataSource, discover
from tlearn.errors import BackboneError, DataError, TlearnError
from tlearn.evaluation.intervals import mcnemar_p_value, wilson_interval
from tlearn.evaluation.tasks import task_for
from tlearn.runs.layout import SELECT_FILE, SELECT_PAGE
from tlearn.runs.lifecycle import OutputFolder
from tlearn.training.head import one_blas_thread, select_c
from tlearn.util import atomic
from tlearn.util.durations import parse_duration
from tlearn.util.numeric import cross_entropy
from tlearn.util.progress import Progress

SELECT_FORMAT = "tlearn-select"
SELECT_VERSION = 1
DEVELOPMENT_SPLITS = ("train", "val")
PROBE_REPEATS = 3  # draws of the cross-validation folds averaged per backbone (odd: "right in most draws")
REPEATED_UP_TO = 5000  # images; beyond, one draw's noise is small (it shrinks as 1/sqrt(N)) and a draw costs more
SELECTIONS_DIR = "selections"  # under the cache root: the latest selection per data folder
SPEED_BATCH = 16
SPEED_SECONDS = 1.0


@dataclass(frozen=True)
class SelectionRequest:
    """Which backbones to try, with which local weights, within what time.

    Example:
        >>> SelectionRequest(("lite0", "resnet50"), {"resnet50": Path("resnet50.safetensors")}, budget_seconds=600)
        ... # doctest: +ELLIPSIS
        SelectionRequest(backbones=('lite0', 'resnet50'), ...)
    """

    backbones: tuple[str, ...]
    weights: Mapping[str, Path] = field(default_factory=dict)  # backbone name → local weights file
    budget_seconds: float | None = None  # no new candidate is started once this much time has passed
    measure_speed: bool = True  # time inference (builds the backbone, so imports torch)


@dataclass(frozen=True)
class SelectedBackbone:
    """The winner of a saved selection: what `tlearn train --backbone best` trains with.

    Example:
        >>> best_backbone("data/")  # doctest: +SKIP
        SelectedBackbone(name='lite2', weights=None, accuracy=0.951, source=PosixPath('.../selections/3f2a.json'))
    """

    name: str
    weights: Path | None
    accuracy: float
    source: Path


@dataclass
class Selection:
    """The ranking: every candidate's row (ranked, unavailable or skipped), the payload of select.json.

    Example:
        >>> selection = tlearn.select("data/", backbones="lite0,lite1,lite2")  # doctest: +SKIP
        >>> selection.winner["name"], selection.table()  # doctest: +SKIP
    """

    payload: dict[str, Any]
    path: Path | None = None  # the --out folder, when one was written

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return self.payload["candidates"]

    @property
    def select_json(self) -> Path | None:
        """select.json in the --out folder (None without one)."""
        return self.path / SELECT_FILE if self.path else None

    @property
    def page(self) -> Path | None:
        """select.html in the --out folder (None without one)."""
        return self.path / SELECT_PAGE if self.path else None

    @property
    def winner(self) -> dict[str, Any] | None:
        """The best-ranked candidate's row, or None when none could be evaluated."""
        return next((row for row in self.candidates if row["rank"] == 1), None)

    def table(self) -> str:
        """The ranking as a Markdown table (what `tlearn select` prints)."""
        header = (
            "| rank | backbone | accuracy | 95% interval | vs best p | LogME | k-NN | embed s | params (M) | size MB "
            "| images/s |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        lines = [header]
        for row in self.candidates:
            if row["status"] != "ranked":
                lines.append(f"| – | {row['name']} | {row['status']}: {row['reason']} |||||||||")
                continue
            low, high = row["interval"]
            lines.append(
                f"| {row['rank']} | {row['name']} | {row['accuracy']:.3f} | {low:.3f}–{high:.3f} | "
                f"{_fixed(row['p_vs_best'], 3)} | {row['logme']:.3f} | {row['knn_accuracy']:.3f} | "
                f"{row['embed_seconds']:.1f} | {_fixed(row['parameters'] and row['parameters'] / 1e6, 2)} | "
                f"{_fixed(row['size_bytes'] and row['size_bytes'] / 1e6, 1)} | {_fixed(row['images_per_second'], 1)} |"
            )
        return "\n".join(lines)


def _fixed(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def parse_budget(text: str | float | None) -> float | None:
    """Seconds from "10m", "90s", "1h30m", "600" (seconds) or a number; None stays None.

    Example:
        >>> parse_budget("10m"), parse_budget("1h30m"), parse_budget("45")
        (600.0, 5400.0, 45.0)
    """
    try:
        return parse_duration(text)
    except ValueError:
        raise TlearnError(f"--budget {text!r}: expected a duration such as 90s, 10m or 1h30m") from None


def select_backbones(
    data: str | Path, request: SelectionRequest, *, out: Path | None, overwrite: bool, device: str, progress: Progress
) -> Selection:
    """Rank `request.backbones` on the development images of `data`; write select.json/.html into `out`.

    Raises:
        DataError: the data folder is unusable.
        BackboneError: no candidate could be evaluated (each reason is in the message).
        RunDirError: `out` cannot be used.

    Example:
        >>> select_backbones("data/", SelectionRequest(("lite0", "lite1")), out=None, overwrite=False,
        ...                  device="cpu", progress=Progress())  # doctest: +SKIP
    """
    source = discover(data)
    refusal = task_for("auto", has_label_sets=source.has_label_sets).select_note
    if refusal:
        raise DataError(f"{source.root}: images with several labels: {refusal} (one class per image)")
    unknown_weights = sorted(set(request.weights) - set(request.backbones))
    if unknown_weights:
        raise TlearnError(f"--weights given for {', '.join(unknown_weights)}, which is not among --backbones")
    development = Counter(image.label for image in source.images if image.split in DEVELOPMENT_SPLITS)
    scarce = [name for name in source.classes if development[name] < 2]
    if scarce:
        raise DataError(
            f"{source.root}: class {scarce[0]!r} has {development[scarce[0]]} train/val image(s); cross-validating "
            "a probe needs at least 2 per class"
        )
    if out is not None:
        with OutputFolder.open(out, kind="select", overwrite=overwrite, data=source.root):
            selection = _rank(source, request, device, progress)
            atomic.write_json(out / SELECT_FILE, selection.payload)
            write_select_page(out / SELECT_PAGE, selection.payload)
        selection.path = out
    else:
        selection = _rank(source, request, device, progress)
    atomic.write_json(selection_record(source.root), selection.payload)
    return selection


def _rank(source: DataSource, request: SelectionRequest, device: str, progress: Progress) -> Selection:
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    answers: dict[str, tuple[list[str], np.ndarray]] = {}  # name → (relpaths, out-of-fold correct)
    for name in request.backbones:
        spent = time.perf_counter() - started
        if rows and request.budget_seconds is not None and spent >= request.budget_seconds:
            rows.append(_row(name, "skipped", f"budget of {request.budget_seconds:.0f} s used up ({spent:.0f} s)"))
            continue
        progress.info(f"select: {name}")
        try:
            ref = resolve_backbone(name, request.weights.get(name))
            embedded = embed_source(source, ref, splits=DEVELOPMENT_SPLITS, device=device, progress=progress)
            row, correct = _probe(embedded)
            row.update(_cost(ref, device, request.measure_speed, progress))
        except (BackboneError, DataError) as error:
            rows.append(_row(name, "unavailable", str(error)))
            progress.info(f"select: {name} unavailable: {error}")
            continue
        answers[name] = (embedded.relpaths, correct)
        rows.append(row)
    ranked = sorted((row for row in rows if row["status"] == "ranked"), key=lambda row: (-row["accuracy"], row["loss"]))
    if not ranked:
        raise BackboneError(
            "no candidate backbone could be evaluated: " + "; ".join(f"{row['name']}: {row['reason']}" for row in rows)
        )
    best_paths, best_correct = answers[ranked[0]["name"]]
    for rank, row in enumerate(ranked, start=1):
        paths, correct = answers[row["name"]]
        row["rank"] = rank
        if rank > 1 and paths == best_paths:
            only_best, only_this = int((best_correct & ~correct).sum()), int((correct & ~best_correct).sum())
            row["p_vs_best"] = mcnemar_p_value(only_best, only_this)
    for score in ("logme", "knn_accuracy"):
        for position, row in enumerate(sorted(ranked, key=lambda row: -row[score]), start=1):
            row[f"{score}_rank"] = position
    others = [row for row in rows if row["status"] != "ranked"]
    winner = ranked[0]
    payload = {
        "format": SELECT_FORMAT,
        "version": SELECT_VERSION,
        "data": str(source.root),
        "classes": source.classes,
        "splits": list(DEVELOPMENT_SPLITS),
        "images": winner["images"],
        "budget_seconds": request.budget_seconds,
        "seconds": round(time.perf_counter() - started, 3),
        "winner": {"name": winner["name"], "arch": winner["arch"], "weights": winner["weights"]},
        "candidates": [*ranked, *others],
    }
    return Selection(payload)


def _row(name: str, status: str, reason: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "status": status,
        "reason": reason,
        "rank": None,
        "arch": None,
        "weights": None,
        "images": None,
        "accuracy": None,
        "interval": None,
        "loss": None,
        "p_vs_best": None,
        "logme": None,
        "knn_accuracy": None,
        "embed_seconds": None,
        "computed": None,
        "probe_seconds": None,
        "probe_repeats": None,
        "parameters": None,
        "size_bytes": None,
        "images_per_second": None,
    }


def _probe(embedded: EmbeddedImages) -> tuple[dict[str, Any], np.ndarray]:
    """Cross-validated linear probe, LogME and k-NN on one backbone's embeddings; also each image's outcome."""
    labels, num_classes = embedded.labels, len(embedded.classes)
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < 2:
        name = embedded.classes[int(counts.argmin())]
        raise DataError(f"{embedded.source.root}: class {name!r} has fewer than 2 readable train/val images")
    started = time.perf_counter()
    repeats = PROBE_REPEATS if len(labels) <= REPEATED_UP_TO else 1
    right_share, loss = probe_outcomes(embedded.embeddings, labels, num_classes, repeats=repeats)
    with one_blas_thread():
        fast_scores = logme(embedded.embeddings, labels, num_classes), knn_accuracy(embedded.embeddings, labels)
    correct = right_share > 0.5  # per image, right in most draws: what McNemar's test pairs
    row = _row(embedded.ref.name, "ranked")
    row.update(
        arch=embedded.ref.arch,
        weights=str(embedded.ref.weights_path) if embedded.ref.source == "file" else None,
        images=len(labels),
        accuracy=float(right_share.mean()),
        interval=list(wilson_interval(round(float(right_share.sum())), len(labels))),
        loss=loss,
        probe_repeats=repeats,
        logme=fast_scores[0],
        knn_accuracy=fast_scores[1],
        embed_seconds=round(embedded.seconds, 3),
        computed=embedded.computed,
    )
    row["probe_seconds"] = round(time.perf_counter() - started, 3)
    return row, correct


def probe_outcomes(
    embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *, repeats: int = PROBE_REPEATS
) -> tuple[np.ndarray, float]:
    """Cross-validate tlearn's linear head `repeats` times, each with its own draw of the folds.

    Returns:
        Per image, the share of draws whose out-of-fold answer was right (N,), and the mean out-of-fold
        log-loss over the draws.
    """
    with one_blas_thread():
        selections = [select_c(embeddings, labels, num_classes, seed=seed) for seed in range(repeats)]
    right = [selection.out_of_fold.argmax(axis=1) == labels for selection in selections]
    loss = float(np.mean([cross_entropy(selection.out_of_fold, labels) for selection in selections]))
    return np.mean(right, axis=0), loss


def _cost(ref: BackboneRef, device: str, measure_speed: bool, progress: Progress) -> dict[str, Any]:
    """Parameters and fp32 size of the feature extractor (its ImageNet classifier excluded), and images/s."""
    extractor = FeatureExtractor(ref, cache_root(), device=device)
    speed = _inference_speed(extractor, progress) if measure_speed else None
    stored = StoredBackbone(cache_root(), ref.key)
    info, path = stored.info(), stored.folder / "weights.safetensors"
    if info is None or not path.is_file():
        return {"images_per_second": speed}
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as weights:
        names = [name for name in weights.keys() if name not in info.classifier_keys]  # noqa: SIM118 - not a dict
        parameters = sum(int(np.prod(weights.get_slice(name).get_shape())) for name in names)
    return {"parameters": parameters, "size_bytes": 4 * parameters, "images_per_second": speed}


def _inference_speed(extractor: FeatureExtractor, progress: Progress) -> float:
    """Images per second through the backbone on random pixels (batch SPEED_BATCH, after a warm-up batch)."""
    backbone = extractor.backbone(progress)
    height, width = backbone.info.preprocessing.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (SPEED_BATCH, height, width, 3), dtype=np.uint8)
    backbone.embed(pixels[:2])
    images, started = 0, time.perf_counter()
    while images == 0 or time.perf_counter() - started < SPEED_SECONDS:
        backbone.embed(pixels)
        images += SPEED_BATCH
    return round(images / (time.perf_counter() - started), 2)


def selection_record(data: str | Path) -> Path:
    """Where the latest selection for a data folder is kept (keyed by the folder's resolved path)."""
    key = hashlib.sha256(str(Path(data).expanduser().resolve()).encode("utf-8")).hexdigest()[:20]
    return cache_root() / SELECTIONS_DIR / f"{key}.json"


def best_backbone(data: str | Path, *, selection: str | Path | None = None) -> SelectedBackbone:
    """The winner of the latest `tlearn select` on `data` (or of the select.json/folder given as `selection`).

    Raises:
        DataError: no selection was saved, it cannot be read, or it was made for other classes.

    Example:
        >>> choice = best_backbone("data/")  # doctest: +SKIP
        >>> tlearn.train("data/", backbone=choice.name, weights=choice.weights)  # doctest: +SKIP
    """
    source = Path(selection) if selection is not None else selection_record(data)
    if source.is_dir():
        source = source / SELECT_FILE
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
        winner = payload["winner"]
        row = next(row for row in payload["candidates"] if row["name"] == winner["name"])
    except FileNotFoundError:
        raise DataError(
            f"{data}: no backbone selection saved for this folder; run `tlearn select {data} --backbones "
            "lite0,lite1,lite2` first"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        raise DataError(f"{source}: not a selection written by tlearn select; run tlearn select again") from None
    classes = discover(data).classes
    if payload.get("classes") != classes:
        raise DataError(
            f"{source}: the selection was made for classes {payload.get('classes')}, {data} now has {classes}; "
            "run tlearn select again"
        )
    weights = Path(winner["weights"]) if winner.get("weights") else None
    return SelectedBackbone(winner["name"], weights, float(row["accuracy"]), source)
