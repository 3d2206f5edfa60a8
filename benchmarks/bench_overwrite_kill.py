"""`--overwrite` killed with SIGKILL at random moments never loses the previous run or a user's file (issue 24).

    nice -n 19 python benchmarks/bench_overwrite_kill.py [--tries 20] [--seed 0]

Protocol: train one tiny run into RUN (pools/train, `--mode linear`, timm's 0.36M-parameter test network with
seeded weights, so it runs in seconds on a CPU), put a user's files beside it (RUN/notes.txt, RUN/samples/), and
time one complete `tlearn train ... --out RUN --overwrite`. Then, `--tries` times: start that command again and
kill its process group with SIGKILL after a delay drawn uniformly from [0, 1.2 x that time] (seeded; a draw past
the run's end lets it complete), then run `tlearn evaluate RUN DATA`, the first command to open RUN afterwards,
and check:

* a run is lost when that evaluate fails, or RUN's marker does not say complete afterwards, or RUN holds neither
  the run from before the try (same marker run_id: put back) nor a run the try completed (a new run_id, only
  when the try's marker said complete before the kill);
* a foreign file is lost when RUN/notes.txt or RUN/samples/keep.txt is missing or changed;
* `.tlearn-previous/` must be gone once evaluate has opened RUN.

Writes benchmarks/results/overwrite-kill.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, require_shared, save
from tlearn.runs.lifecycle import ASIDE_DIR, read_marker

sys.path.insert(0, str(ROOT / "tests"))  # for the tests' tiny backbone (`helpers`)

DATA = SHARED / "pools" / "train"
FOREIGN = {"notes.txt": b"my notes on this run\n", "samples/keep.txt": b"a file the user keeps here\n"}


def tlearn_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "tlearn", *map(str, args)]


def run_to_end(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(tlearn_command(*args), capture_output=True, text=True, env=env)


def kill_after(command: list[str], delay: float, env: dict[str, str], marker_of: Path) -> dict[str, object]:
    """Start `command`, SIGKILL its process group after `delay` s unless it ended; say what the marker said."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + delay
    completed_seen = False  # the new run's marker said complete while the process ran
    before = (read_marker(marker_of) or {}).get("run_id")
    while time.monotonic() < deadline and process.poll() is None:
        marker = read_marker(marker_of) or {}
        completed_seen |= marker.get("run_id") != before and bool(marker.get("complete"))
        time.sleep(0.01)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)
    _, err = process.communicate()
    marker = read_marker(marker_of) or {}
    completed_seen |= marker.get("run_id") != before and bool(marker.get("complete"))
    return {"killed": killed, "returncode": process.returncode, "completed": completed_seen, "stderr": err}


def foreign_lost(run: Path) -> int:
    return sum(not (run / name).is_file() or (run / name).read_bytes() != content for name, content in FOREIGN.items())


def weights_digest(run: Path) -> str | None:
    weights = run / "model" / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    require_shared()
    from helpers import TINY_BACKBONE, tiny_backbone_weights  # deferred: found through the path set above

    rng = random.Random(options.seed)
    with tempfile.TemporaryDirectory(prefix="bench-overwrite-kill-") as scratch:
        work = Path(scratch)
        env = {**os.environ, "TLEARN_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
        weights = tiny_backbone_weights(work)
        run = work / "run"
        flags = ["--mode", "linear", "--backbone", TINY_BACKBONE, "--weights", weights, "--quiet"]
        first = run_to_end("train", DATA, "--out", run, *flags, env=env)
        if first.returncode != 0:
            sys.exit(f"the first run failed:\n{first.stderr}")
        for name, content in FOREIGN.items():
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_bytes(content)
        overwrite = tlearn_command("train", DATA, "--out", run, *flags, "--overwrite")
        started = time.perf_counter()
        full = subprocess.run(overwrite, capture_output=True, text=True, env=env)
        overwrite_seconds = time.perf_counter() - started
        if full.returncode != 0:
            sys.exit(f"the timed --overwrite failed:\n{full.stderr}")
        tries = []
        for number in range(options.tries):
            before = read_marker(run) or {}
            delay = rng.uniform(0.0, 1.2 * overwrite_seconds)
            outcome = kill_after(overwrite, delay, env, run)
            kept_copy = (run / ASIDE_DIR).exists()
            evaluation = run_to_end("evaluate", run, DATA, "--quiet", env=env)
            after = read_marker(run) or {}
            same_run = after.get("run_id") == before.get("run_id")
            new_completed_run = not same_run and outcome["completed"]
            lost = (
                evaluation.returncode != 0
                or not after.get("complete")
                or weights_digest(run) is None
                or not (same_run or new_completed_run)
            )
            tries.append(
                {
                    "try": number,
                    "kill_after_s": round(delay, 2),
                    "killed": outcome["killed"],
                    "overwrite_completed": outcome["completed"],
                    "copy_kept_after_kill": kept_copy,
                    "previous_put_back": same_run,
                    "evaluate_ok": evaluation.returncode == 0,
                    "evaluate_error": evaluation.stderr.strip().splitlines()[-1:] if evaluation.returncode else [],
                    "run_lost": lost,
                    "foreign_files_lost": foreign_lost(run),
                    "copy_left_after_evaluate": (run / ASIDE_DIR).exists(),
                }
            )
            print(json.dumps(tries[-1]), flush=True)
        save(
            "overwrite-kill",
            {
                "protocol": (
                    f"pools/train, --mode linear, {TINY_BACKBONE}; {options.tries} x `tlearn train --overwrite` "
                    f"killed (SIGKILL, process group) after U(0, 1.2 x {overwrite_seconds:.1f} s), seed "
                    f"{options.seed}; then `tlearn evaluate RUN DATA`"
                ),
                "overwrite_seconds": round(overwrite_seconds, 2),
                "tries": len(tries),
                "killed": sum(item["killed"] for item in tries),
                "killed_while_previous_set_aside": sum(item["copy_kept_after_kill"] for item in tries),
                "previous_put_back": sum(item["previous_put_back"] for item in tries),
                "replaced_by_completed_run": sum(not item["previous_put_back"] for item in tries),
                "runs_lost": sum(item["run_lost"] for item in tries),
                "foreign_files_lost": sum(item["foreign_files_lost"] for item in tries),
                "copies_left_after_evaluate": sum(item["copy_left_after_evaluate"] for item in tries),
                "details": tries,
            },
        )


if __name__ == "__main__":
    main()
