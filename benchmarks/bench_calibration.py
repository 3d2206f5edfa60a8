"""Temperature scaling on hymenoptera: expected calibration error with and without `--calibrate`.

    python benchmarks/bench_calibration.py [--mode linear|finetune] [-- extra tlearn train flags]

Protocol: `tlearn train hymenoptera/train` twice, without and with `--calibrate` (the temperature is fitted
on the run's own validation split), then `tlearn evaluate` of each model on hymenoptera/val, which training
never sees. Reports ECE (15 equal-width bins), cross-entropy and accuracy on the run's test split and on
hymenoptera/val; accuracy cannot change (a temperature never changes an answer).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save

TRAIN = SHARED / "hymenoptera" / "train"
VAL = SHARED / "hymenoptera" / "val"
FIGURES = ("accuracy", "ece", "loss", "n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="linear", choices=("linear", "finetune"))
    parser.add_argument("extra", nargs="*", help="more `tlearn train` flags, after --")
    args = parser.parse_args()
    require_shared()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-calibration-"))
    outcome: dict[str, dict[str, object]] = {}
    for name, flags in (("uncalibrated", []), ("calibrated", ["--calibrate"])):
        run = work / name
        run_tlearn("train", TRAIN, "--out", run, "--mode", args.mode, *flags, *args.extra, "-q")
        run_tlearn("evaluate", run / "model", VAL, "--out", work / f"{name}-val", "-q")
        run_metrics = json.loads((run / "metrics.json").read_text())
        held_out = json.loads((work / f"{name}-val" / "metrics.json").read_text())["all"]
        outcome[name] = {
            "temperature": json.loads((run / "model" / "config.json").read_text())["temperature"],
            "run_test_split": {key: run_metrics["test"][key] for key in FIGURES},
            "hymenoptera_val": {key: held_out[key] for key in FIGURES},
        }
    before, after = (outcome[name]["hymenoptera_val"] for name in ("uncalibrated", "calibrated"))
    save(
        f"calibration-{args.mode}",
        {
            "command": f"tlearn train {TRAIN} --out RUN --mode {args.mode} [--calibrate] ; "
            f"tlearn evaluate RUN/model {VAL}",
            **outcome,
            "ece_hymenoptera_val": {"without": round(before["ece"], 4), "with": round(after["ece"], 4)},
            "ece_not_worse": after["ece"] <= before["ece"],
        },
    )


if __name__ == "__main__":
    main()
