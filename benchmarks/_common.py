"""Helpers shared by the benchmark scripts: timed CLI runs, machine facts, JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = Path(__file__).resolve().parent / "results"


def require_shared() -> None:
    if not SHARED.is_dir():
        sys.exit(f"benchmark needs the shared datasets at {SHARED}")


def run_tlearn(*args: object, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `tlearn ARGS` as a fresh process; returns (wall seconds, stdout). Fails loudly on error."""
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "tlearn", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"tlearn {' '.join(map(str, args))} failed ({completed.returncode}):\n{completed.stderr}")
    return seconds, completed.stdout


def machine() -> dict[str, object]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save(name: str, result: dict[str, object]) -> Path:
    """Print the result and write it to benchmarks/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"saved {path}")
    return path
