"""What watching the hardware costs: the time one sample takes, as a share of the sampling interval.

    python benchmarks/bench_monitor.py [--children 2] [--samples 500] [--name monitor]

The monitor's thread takes one sample per second during fine-tuning (`tlearn.util.hardware`): the memory of
this process and its decoding workers (started here as `--children` idle processes) and, on a CUDA GPU, three
NVML calls; each epoch adds one CPU-time reading. Its cost on an epoch is at most the sample's time over the
interval (it holds the GIL for that long). Reported: mean and p99 seconds per sample and per epoch-end reading,
and that share. Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from _common import save


def idle(seconds: float) -> None:
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--name", default="monitor")
    args = parser.parse_args()
    from tlearn.util.hardware import HardwareMonitor

    children = [multiprocessing.Process(target=idle, args=(120,), daemon=True) for _ in range(args.children)]
    for child in children:
        child.start()
    try:
        monitor = HardwareMonitor(gpu_index=None)
        sample_times, take_times = [], []
        for _ in range(args.samples):
            started = time.perf_counter()
            monitor.sample()
            sample_times.append(time.perf_counter() - started)
        for _ in range(50):
            started = time.perf_counter()
            monitor.take()
            take_times.append(time.perf_counter() - started)
    finally:
        for child in children:
            child.terminate()
    mean = statistics.mean(sample_times)
    p99 = sorted(sample_times)[int(0.99 * len(sample_times)) - 1]
    result = {
        "children": args.children,
        "sample_mean_ms": round(1000 * mean, 3),
        "sample_p99_ms": round(1000 * p99, 3),
        "take_mean_ms": round(1000 * statistics.mean(take_times), 3),
        "share_of_interval": round(mean / monitor.interval, 6),
    }
    print(result)
    save(args.name, result)


if __name__ == "__main__":
    main()
