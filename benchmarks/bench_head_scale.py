"""The linear head on a million cached embeddings: wall time and peak memory of the fit.

    python benchmarks/bench_head_scale.py [--rows 1000000] [--dim 1280] [--classes 10] [--test-rows 50000]

Draws `--rows` embeddings (float16, like a cluster's embedding store; non-negative like pooled activations,
with overlapping classes so a linear head reaches roughly 90%) into a memory-mapped .npy file, then, in a fresh
process, does what a linear run does with them: C cross-validated on a stratified sample of 2,000 rows
(`candidates.CV_LIMIT`), then `fit_head` on every row — which streams beyond `STREAM_VALUES` values (SciPy's L-BFGS
over chunked NumPy passes from a sample's fit, float16 chunks converted by torch;
training/streaming_head.py). Reported: seconds of each step, passes over the rows,
the process's peak RSS (`ru_maxrss`: the mapped float16 rows count once they are read), and accuracy on
`--test-rows` fresh rows of the streamed head against the head fitted on the starting sample alone.
Results: benchmarks/results/head_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import save

SEPARATION = 0.085  # class centres' share of each row: overlapping classes (a linear head scores ~90%)
DRAW_ROWS = 50_000


def draw(path: Path, rows: int, dim: int, classes: int, seed: int) -> np.ndarray:
    """`rows` float16 embeddings into a .npy memmap at `path`; returns their classes."""
    centres = np.random.default_rng(1234).normal(0, 1, (classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, DRAW_ROWS):
        stop = min(rows, start + DRAW_ROWS)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = np.maximum(noise + SEPARATION * centres[labels[start:stop]], 0)
    out.flush()
    del out
    return labels


def child(folder: Path, classes: int) -> None:
    """The measured process: C search on a sample, then the head on every row; prints JSON."""
    from tlearn.evaluation.tasks import SINGLE_LABEL
    from tlearn.training import streaming_head
    from tlearn.training.candidates import CV_LIMIT
    from tlearn.training.head import fit_head, select_c

    fits = []
    stream = streaming_head.fit_streaming
    streaming_head.fit_streaming = lambda *args: fits.append(stream(*args)) or fits[-1]  # keep its passes
    x = np.load(folder / "train.npy", mmap_mode="r")
    targets = np.load(folder / "train_labels.npy")
    started = time.perf_counter()
    sample = SINGLE_LABEL.sample(targets, CV_LIMIT, 0)
    selection = select_c(np.asarray(x[sample], dtype=np.float32), targets[sample], classes)
    select_s = time.perf_counter() - started
    started = time.perf_counter()
    head = fit_head(x, targets, classes, selection.c)
    fit_s = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start_rows = SINGLE_LABEL.sample(targets, streaming_head.START_ROWS, 0)
    sample_head = fit_head(np.asarray(x[start_rows], dtype=np.float32), targets[start_rows], classes, selection.c)
    test = np.load(folder / "test.npy").astype(np.float32)
    test_targets = np.load(folder / "test_labels.npy")
    print(
        json.dumps(
            {
                "c": selection.c,
                "select_c_s": round(select_s, 2),
                "fit_s": round(fit_s, 2),
                "peak_rss_gb": round(peak_rss / 1e9, 3),
                "test_accuracy": float((head.logits(test).argmax(1) == test_targets).mean()),
                "start_sample_rows": len(start_rows),
                "start_sample_test_accuracy": float((sample_head.logits(test).argmax(1) == test_targets).mean()),
                "streamed": bool(fits),
                "passes": fits[0].passes if fits else None,
                "stream_values_threshold": streaming_head.STREAM_VALUES,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--test-rows", type=int, default=50_000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.classes)
        return
    with tempfile.TemporaryDirectory(prefix="tlearn-head-scale-") as folder:
        started = time.perf_counter()
        np.save(
            Path(folder) / "train_labels.npy", draw(Path(folder) / "train.npy", args.rows, args.dim, args.classes, 0)
        )
        test_labels = draw(Path(folder) / "test.npy", args.test_rows, args.dim, args.classes, 1)
        np.save(Path(folder) / "test_labels.npy", test_labels)
        draw_s = time.perf_counter() - started
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, __file__, "--child", folder, "--classes", str(args.classes)],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(completed.stdout.strip().splitlines()[-1])
        save(
            "head_scale",
            {
                "rows": args.rows,
                "dim": args.dim,
                "classes": args.classes,
                "dtype": "float16",
                "store_gb": round(args.rows * args.dim * 2 / 1e9, 2),
                "draw_s": round(draw_s, 1),
                "process_s": round(time.perf_counter() - started, 1),
                **measured,
                "goal": "head fitted on 1M rows in <= 120 s with <= 4 GB peak RSS",
            },
        )


if __name__ == "__main__":
    main()
