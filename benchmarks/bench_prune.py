"""Channel pruning (`--prune`): a fine-tuned Lite0 against the same network pruned to 1/P of its compute and
fine-tuned to recover, on the shared sets' held-out folders, with both models' ONNX Runtime speed.

    python benchmarks/bench_prune.py [--sets signs,mri] [--prune 1.5[,1.3...]] [--teacher-share 0.5]
                                     [--flags "--lr 1e-3 ..."] [--keep DIR] [--name prune]

Per set, each as a fresh `tlearn train SET/train` process, evaluated once on the held-out folder (as
bench_suite.py does):
- full: `--backbone lite0 --mode finetune` (the network the default command fine-tunes, without its budget);
- pruned P: `--backbone lite0 --prune P --teacher FULL_RUN --teacher-share S` plus `--flags`, for each P (the
  full network is the one pruned, and recovery learns from its answers and the labels; S = 0: the labels alone).
Then every model is exported to ONNX and timed in this process, one after the other (`tlearn.deploy.speed`:
batches of 32, and one image at a time for the latency): compare the speeds as ratios, measured in one run.
`--keep DIR` keeps the runs in DIR/SET/ (else they go with a temporary folder); `--retime DIR` then times the
kept models again, one after the other, without training (e.g. once the machine is quiet).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import tempfile
from pathlib import Path

from _common import require_shared, save
from bench_suite import SETS, run_config
from tlearn.deploy.speed import measure_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default="signs,mri")
    parser.add_argument("--prune", default="1.5", help="one or several speed-ups, comma-separated")
    parser.add_argument("--teacher-share", type=float, default=0.5)
    parser.add_argument("--flags", default="", help="more `tlearn train` flags for the pruned runs")
    parser.add_argument("--keep", type=Path, help="keep the runs in KEEP/SET/ instead of a temporary folder")
    parser.add_argument("--retime", type=Path, help="only time the models kept in RETIME/SET/ by --keep")
    parser.add_argument("--name", default="prune")
    args = parser.parse_args()
    if args.retime:
        save(args.name, {"retimed": str(args.retime), "results": retime(args.retime, args.sets.split(","))})
        return
    require_shared()
    results: dict[str, dict[str, object]] = {}
    for data_set in args.sets.split(","):
        if data_set not in SETS:
            raise SystemExit(f"unknown set {data_set!r}; expected one of {', '.join(SETS)}")
        kept = args.keep / data_set if args.keep else None
        with contextlib.nullcontext(kept) if kept else tempfile.TemporaryDirectory(prefix="tlearn-prune-") as temp:
            work = Path(temp)
            tuned = ["--backbone", "lite0", "--mode", "finetune"]
            cells = {"full": run_config(data_set, tuned, work / "full")}
            for speedup in args.prune.split(","):
                flags = [*tuned, "--prune", speedup, "--teacher", str(work / "full" / "run")]
                flags += ["--teacher-share", str(args.teacher_share), *shlex.split(args.flags)]
                cells[f"pruned {speedup}"] = run_config(data_set, flags, work / f"pruned-{speedup}")
            for name, cell in cells.items():
                speed = measure_speed(work / name.replace(" ", "-") / "run")
                cell["onnx_images_per_second"] = round(speed.images_per_second, 1)
                cell["onnx_latency_ms"] = round(speed.latency_ms, 2)
        full = cells["full"]
        for cell in list(cells.values())[1:]:
            cell["speedup"] = round(cell["onnx_images_per_second"] / full["onnx_images_per_second"], 3)
            cell["accuracy_change"] = round(cell["accuracy"] - full["accuracy"], 4)
        results[data_set] = cells
        print(data_set, {name: (cell["accuracy"], cell.get("speedup")) for name, cell in cells.items()}, flush=True)
        settings = {"prune": args.prune, "teacher_share": args.teacher_share, "flags": args.flags}
        save(args.name, {**settings, "results": results})


def retime(kept: Path, data_sets: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """ONNX Runtime images/s and latency of every model `--keep` left under KEPT/SET/, with each pruned model's
    speed-up over the full one of its set."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for data_set in data_sets:
        runs = sorted(path.parent for path in (kept / data_set).glob("*/run/run.json"))
        cells = {}
        for run in runs:
            speed = measure_speed(run)
            cells[run.parent.name] = {
                "onnx_images_per_second": round(speed.images_per_second, 1),
                "onnx_latency_ms": round(speed.latency_ms, 2),
            }
        for cell in cells.values():
            cell["speedup"] = round(cell["onnx_images_per_second"] / cells["full"]["onnx_images_per_second"], 3)
        results[data_set] = cells
        print(data_set, cells, flush=True)
    return results


if __name__ == "__main__":
    main()
