"""Report generation time for a few thousand test images, and a screenshot of the hymenoptera report.

    python benchmarks/bench_report.py [--images 3000] [--classes 2 10 100]

Protocol: one real linear run, `tlearn train hymenoptera/train` (its model, history, and embeddings in the
cache, as after any run). Then, for each class count, a synthetic run folder beside it holding `--images`
test predictions: random labels, probabilities that are right about 80% of the time, paths of real
hymenoptera images reused round-robin, and metrics.json computed from them by tlearn's own metrics.
`write_report` runs on each in a fresh process with scikit-learn already imported (as at the end of
`tlearn train`): `first_s` includes importing matplotlib and jinja2, `again_s` is a second report in the
same process. The real run's report.html, and that of `tlearn evaluate` of its model on hymenoptera/val
(which has errors to show), are screenshot in headless Chromium to benchmarks/results/report-hymenoptera*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import RESULTS, SHARED, require_shared, run_tlearn, save
from tlearn.evaluation.metrics import classification_metrics
from tlearn.util import atomic
from tlearn.util.numeric import softmax

HYMENOPTERA = SHARED / "hymenoptera"
TIMING_SCRIPT = """
import json, sys, time
import sklearn.metrics  # imported by every run before its report
started = time.perf_counter()
from tlearn.report.page import write_report
write_report(sys.argv[1])
first = time.perf_counter() - started
started = time.perf_counter()
write_report(sys.argv[1])
print(json.dumps({"first_s": round(first, 2), "again_s": round(time.perf_counter() - started, 2)}))
"""


def synthetic_run(base: Path, folder: Path, *, images: int, classes: int, seed: int = 0) -> Path:
    """A run folder with `images` test predictions over `classes` classes, reusing `base`'s model and history."""
    rng = np.random.default_rng(seed)
    names = [f"class_{index:03d}" for index in range(classes)]
    paths = sorted(path.relative_to(HYMENOPTERA).as_posix() for path in (HYMENOPTERA / "train").rglob("*.jpg"))
    labels = rng.integers(0, classes, images)
    guessed = np.where(rng.random(images) < 0.8, labels, rng.integers(0, classes, images))
    probabilities = softmax(rng.normal(0, 1, (images, classes)) + 4 * np.eye(classes)[guessed])
    folder.mkdir(parents=True)
    for name in ("model", "history.csv", "run.json"):
        (folder / name).symlink_to(base / name)
    atomic.write_json(folder / "metrics.json", {"test": classification_metrics(labels, probabilities, names)})
    test_counts = dict(zip(names, np.bincount(labels, minlength=classes).tolist(), strict=True))
    atomic.write_json(
        folder / "data_report.json",
        {
            "data": str(HYMENOPTERA),
            "counts": {"train": {name: 3 * n for name, n in test_counts.items()}, "test": test_counts},
            "skipped": [],
            "ignored": [],
            "duplicates": [],
            "leakage": [],
            "label_conflicts": [],
        },
    )
    rows = [
        {
            "path": paths[index % len(paths)],
            "split": "test",
            "label": names[label],
            "predicted": names[int(row.argmax())],
            "confidence": round(float(row.max()), 6),
            **{f"p_{name}": round(float(value), 6) for name, value in zip(names, row, strict=True)},
        }
        for index, (label, row) in enumerate(zip(labels, probabilities, strict=True))
    ]
    atomic.write_csv(folder / "predictions.csv", rows, list(rows[0]))
    return folder


def time_report(folder: Path) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", TIMING_SCRIPT, str(folder)], capture_output=True, text=True, check=True, env=os.environ
    )
    return json.loads(completed.stdout)


def screenshot(report: Path, target: Path) -> str:
    """Full-page screenshot of report.html in headless Chromium; returns the path or why there is none."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "no screenshot: playwright is not installed"
    if chromium is None:
        return "no screenshot: chromium is not installed"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(report.resolve().as_uri())
        page.screenshot(path=str(target), full_page=True)
        browser.close()
    return str(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 10, 100])
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-report-"))
    base = work / "hymenoptera"
    run_tlearn("train", HYMENOPTERA / "train", "--out", base, "-q")
    timings = {
        "hymenoptera_run": {
            "test_images": json.loads((base / "metrics.json").read_text())["test"]["n"],
            **time_report(base),
        }
    }
    for classes in args.classes:
        folder = synthetic_run(base, work / f"synthetic-{classes}", images=args.images, classes=classes)
        timings[f"{args.images}_images_{classes}_classes"] = time_report(folder)
    load_average = os.getloadavg()[0]
    run_tlearn("evaluate", base / "model", HYMENOPTERA / "val", "--out", work / "val", "-q")
    RESULTS.mkdir(exist_ok=True)
    shots = [
        screenshot(base / "report.html", RESULTS / "report-hymenoptera.png"),
        screenshot(work / "val" / "report.html", RESULTS / "report-hymenoptera-val.png"),
    ]
    save(
        "report",
        {
            "command": f"tlearn train {HYMENOPTERA / 'train'} --out RUN ; write_report(RUN) and synthetic runs",
            "seconds": timings,
            "report_html_bytes": (base / "report.html").stat().st_size,
            "figures": sorted(path.name for path in (base / "figures").glob("*.png")),
            "load_average_1min": round(load_average, 2),  # other work on the machine slows every figure
            "screenshots": shots,
        },
    )


if __name__ == "__main__":
    main()
