"""Distillation: a Lite0 network taught by a Lite2 teacher (`--teacher`) against the teacher and against Lite0
fine-tuned on the labels alone, on the shared sets' held-out folders.

    python benchmarks/bench_distill.py [--sets hymenoptera,mri] [--share 0.5] [--name distill]

Per set, each as a fresh `tlearn train SET/train` process, evaluated once on the held-out folder (as
bench_suite.py does):
- teacher: `--backbone lite2` (the default command otherwise: auto mode, its 8-minute budget);
- lite0: `--backbone lite0 --mode finetune` (Lite0 fine-tuned on the labels);
- student: the same with `--teacher TEACHER_RUN --teacher-share SHARE`.
The ONNX Runtime speeds of the two backbones come from bench_export_breakeven.py (same machine).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import require_shared, save
from bench_suite import SETS, run_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sets", default="hymenoptera,mri")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--name", default="distill")
    args = parser.parse_args()
    require_shared()
    results: dict[str, dict[str, object]] = {}
    for data_set in args.sets.split(","):
        if data_set not in SETS:
            raise SystemExit(f"unknown set {data_set!r}; expected one of {', '.join(SETS)}")
        with tempfile.TemporaryDirectory(prefix="tlearn-distill-") as temp:
            work = Path(temp)
            cells = {"teacher": run_config(data_set, ["--backbone", "lite2"], work / "teacher")}
            tuned = ["--backbone", "lite0", "--mode", "finetune"]
            cells["lite0"] = run_config(data_set, tuned, work / "lite0")
            taught = [*tuned, "--teacher", work / "teacher" / "run", "--teacher-share", str(args.share)]
            cells["student"] = run_config(data_set, [str(flag) for flag in taught], work / "student")
        results[data_set] = cells
        print(data_set, {name: (cell["accuracy"], cell["train_seconds"]) for name, cell in cells.items()}, flush=True)
        save(args.name, {"share": args.share, "results": results})


if __name__ == "__main__":
    main()
