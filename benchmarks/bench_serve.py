"""`tlearn serve` under load: requests/s and p50/p99 latency at concurrency 1, 8, 16 and 32, one image per
request, beside a bare onnxruntime + FastAPI handler under the same load.

    python benchmarks/bench_serve.py [--model MODEL] [--requests 60,160,240,320] [--max-seconds 90] [--no-bare]

Protocol: the model (default: Lite0 trained on hymenoptera/train, exported to ONNX fp32) is served by
`tlearn serve` on a free loopback port with its defaults (micro-batches of up to 32 images, 5 ms window). A
separate load-generator process (this script with `--load`) keeps C requests in flight, each one
hymenoptera/val JPEG (cycling through the 153 files), until its request count or time limit is reached; it
records each request's latency and status and the micro-batch sizes the server reports. A failed request
is any answer other than 200 or a transport error. Traffic never leaves 127.0.0.1.

The bare handler (`benchmarks/_bare_server.py`) is what a hand-written service does: FastAPI under uvicorn,
one `def` endpoint taking the same multipart upload, Pillow decode + resize + centre crop + normalise in NumPy,
and one onnxruntime call per request on the same graph (no micro-batching, no guards). It is measured after
tlearn's server under the same levels; `serve_over_bare` is tlearn's requests/s over the bare handler's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED, require_shared, run_tlearn, save

TRAIN = SHARED / "hymenoptera" / "train"
VAL = SHARED / "hymenoptera" / "val"
CONCURRENCY = (1, 8, 16, 32)


async def generate_load(url: str, concurrency: int, requests: int, max_seconds: float) -> dict[str, object]:
    """Keep `concurrency` requests in flight until `requests` are done or `max_seconds` have passed."""
    import httpx

    images = [(path.name, path.read_bytes()) for path in sorted(VAL.rglob("*.jpg"))]
    latencies: list[float] = []
    batch_images: list[int] = []
    failures: list[str] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            name, content = images[issued % len(images)]
            issued += 1
            started = time.perf_counter()
            try:
                upload = [("files", (name, content, "image/jpeg"))]
                answer = await client.post(f"{url}/v1/predict?top_k=1", files=upload)
            except httpx.HTTPError as error:
                failures.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                failures.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            elif "timing" in answer.json():  # tlearn reports its micro-batches; the bare handler has none
                batch_images.append(answer.json()["timing"]["batch_images"])

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + sum(1 for f in failures if not f.startswith("HTTP")),
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "mean_batch_images": round(statistics.mean(batch_images), 2) if batch_images else None,
        "max_batch_images": max(batch_images, default=None),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, *, bare: bool = False) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "tlearn", "serve", str(model), "--port", str(port), "-q"]
    if bare:
        command = [sys.executable, str(Path(__file__).with_name("_bare_server.py")), str(model), str(port)]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"tlearn serve exited: {server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit("tlearn serve did not become ready in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory or .onnx file (default: train + export)")
    parser.add_argument("--requests", default="60,160,240,320", help="requests per concurrency level 1,8,16,32")
    parser.add_argument("--max-seconds", type=float, default=90, help="time limit per concurrency level")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare onnxruntime + FastAPI handler")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # load-generator mode: URL
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_shared()
    request_counts = [int(n) for n in args.requests.split(",")]
    if args.load:
        [count] = request_counts
        print(json.dumps(asyncio.run(generate_load(args.load, args.concurrency, count, args.max_seconds))))
        return
    model = args.model
    if model is None:
        work = Path(tempfile.mkdtemp(prefix="tlearn-bench-serve-"))
        run_tlearn("train", TRAIN, "--out", work / "run", "-q")
        run_tlearn("export", work / "run", "--out", work / "model.onnx", "--check-data", VAL, "-q")
        model = work / "model.onnx"
    servers = {"tlearn": run_levels(model, request_counts, args.max_seconds, bare=False)}
    if not args.no_bare:
        servers["bare"] = run_levels(model, request_counts, args.max_seconds, bare=True)
    ratios = {}
    if "bare" in servers:
        for ours, theirs in zip(servers["tlearn"], servers["bare"], strict=True):
            ratios[str(ours["concurrency"])] = round(ours["requests_per_s"] / theirs["requests_per_s"], 3)
    save(
        "serve",
        {
            "protocol": "tlearn serve (defaults) on 127.0.0.1; separate load-generator process; one hymenoptera/val "
            "JPEG per request; C requests in flight; then the bare onnxruntime + FastAPI handler the same way",
            "model": str(model),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "levels": servers["tlearn"],
            "bare_levels": servers.get("bare"),
            "serve_over_bare": ratios,
            "failed_requests": sum(level["failed"] for level in servers["tlearn"]),
        },
    )


def run_levels(model: Path, request_counts: list[int], max_seconds: float, *, bare: bool) -> list[dict]:
    """Every concurrency level against one server (tlearn's or the bare handler)."""
    port = free_port()
    server = start_server(model, port, bare=bare)
    levels = []
    try:
        for concurrency, count in zip(CONCURRENCY, request_counts, strict=True):
            completed = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--load",
                    f"http://127.0.0.1:{port}",
                    "--concurrency",
                    str(concurrency),
                    "--requests",
                    str(count),
                    "--max-seconds",
                    str(max_seconds),
                ],
                capture_output=True,
                text=True,
                timeout=max_seconds + 120,
                check=True,
            )
            levels.append(json.loads(completed.stdout.strip().splitlines()[-1]))
            print("bare" if bare else "tlearn", json.dumps(levels[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return levels


if __name__ == "__main__":
    main()
