"""`tlearn serve` soaked with hostile traffic: zero crashes, every bad request 4xx/503, every good one right.

    python benchmarks/bench_serve_hostile.py [--seconds 60] [--clients 16] [--model MODEL.onnx]

Protocol: a tiny model (timm's `test_efficientnet` with seeded random weights, a linear head trained on
drawn circles, squares and triangles, exported to ONNX fp32) is served by `tlearn serve` with its defaults
on a free loopback port. For `--seconds`, `--clients` concurrent clients send, in rotation:

* good: a drawn image (PNG or JPEG); must be 200 with the top-1 label the same model gives offline;
* 16bit: a 6000x6000 16-bit greyscale PNG (36 MP, under the 40 MP upload limit); must be 200, its label the
  offline one;
* thin: a 100000x1 PNG (a few hundred bytes, gigapixels once resized); must be 413;
* bomb: a 42 MP PNG header over the upload limit; must be 413;
* junk: random bytes named .jpg; must be 415;
* oversized: a body declared (Content-Length) or streamed (chunked) beyond the 10 MB limit; must be 413;
* slow (two clients only): headers, half a body, then one byte every 2 s; must be 408 once the 30 s body
  timeout passes;
* webp: one lossless WebP of 6300x6300 (a few hundred bytes, 39.7 MP: just under the upload limit, seconds of
  CPU and hundreds of MB to decode); must be 200;
* webp16: sixteen of them in one request (635 MP declared against the 100 MP request budget); must be 413;
* scans: a progressive JPEG with its last scan repeated 200 times (a scan bomb); must be 413;
* idle: `--idle` sockets held open without sending a byte, reopened when the server closes them.

A monitor polls `/healthz` every 0.25 s on its own connection (each must answer in < 1 s) and samples the
service's resident memory from /proc (VmRSS; VmHWM for the peak). A crash is the service exiting, a
transport error where an answer was due, or any answer other than the expected one. The result is saved to
benchmarks/results/serve_hostile.json. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from _common import save
from bench_serve import free_port, start_server

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # tlearn serve's default --max-request-mb
BODY_TIMEOUT_S = 30.0  # ServeSettings.body_timeout_s
HEALTH_LIMIT_S = 1.0
EXPECTED = {
    "good": 200,
    "16bit": 200,
    "thin": 413,
    "bomb": 413,
    "junk": 415,
    "oversized": 413,
    "slow": 408,
    "webp": 200,
    "webp16": 413,
    "scans": 413,
}
ROTATION = ["good", "good", "thin", "good", "junk", "good", "16bit", "good", "bomb", "good", "oversized", "good"]
ROTATION += ["webp", "good", "webp16", "good", "scans", "good"]


def tiny_model(work: Path) -> Path:
    """Train and export the tiny model (seconds, offline); returns the .onnx file."""
    import timm
    import torch
    from safetensors.torch import save_file

    import tlearn
    from tlearn.data.demo import draw_dataset

    torch.manual_seed(0)
    weights = work / "test_efficientnet.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    data = draw_dataset(work / "data", per_class=20, size=96, seed=1)
    run = tlearn.train(data, out=work / "run", backbone="test_efficientnet", weights=weights, mode="linear", quiet=True)
    return tlearn.export(run.path, work / "model.onnx", check_data=data).path


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and holds no pixels (refused by its size alone)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def payloads(work: Path, model: Path) -> dict[str, list[tuple[str, bytes, str | None]]]:
    """(file name, bytes, expected top-1 label or None) per kind; labels from the same model offline."""
    import tlearn
    from tlearn.data.demo import draw_dataset

    drawn = sorted(draw_dataset(work / "fresh", per_class=8, size=128, seed=7).rglob("*.png"))
    good = []
    for index, path in enumerate(drawn):
        picture = Image.open(path).convert("RGB")
        if index % 2:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=90)
            good.append((path.stem + ".jpg", buffer.getvalue()))
        else:
            good.append((path.name, png_bytes(picture)))
    height = width = 6000
    ramp = np.add.outer(np.arange(height, dtype=np.uint32) * 7, np.arange(width, dtype=np.uint32) * 3)
    deep = [("deep.png", png_bytes(Image.fromarray((ramp % 65536).astype(np.uint16))))]
    del ramp
    files = []
    for name, content in good + deep:
        (work / "offline" / name).parent.mkdir(exist_ok=True)
        (work / "offline" / name).write_bytes(content)
        files.append(work / "offline" / name)
    offline = {Path(p.source).name: p.label for p in tlearn.load(model).predict(files, top_k=1)}
    junk = random.Random(0).randbytes(50_000)
    webp = io.BytesIO()
    Image.new("RGB", (6300, 6300), (40, 120, 200)).save(webp, format="WEBP", lossless=True)
    noise = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    progressive = io.BytesIO()
    Image.fromarray(noise).save(progressive, format="JPEG", progressive=True, quality=90)
    data = progressive.getvalue()
    scan_bomb = data[:-2] + data[data.rfind(b"\xff\xda") : -2] * 200 + b"\xff\xd9"
    return {
        "webp": [("flat.webp", webp.getvalue(), None)],
        "webp16": [("flat.webp", webp.getvalue(), None)],
        "scans": [("scans.jpg", scan_bomb, None)],
        "good": [(name, content, offline[name]) for name, content in good],
        "16bit": [(name, content, offline[name]) for name, content in deep],
        "thin": [("thin.png", png_bytes(Image.new("L", (100_000, 1))), None)],
        "bomb": [("bomb.png", png_header(7000, 6000), None)],
        "junk": [("junk.jpg", junk, None)],
    }


def multipart(name: str, content: bytes, boundary: str = "tlearnbench") -> tuple[bytes, str]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def raw_request(port: int, head: bytes, body_parts, *, pause_s: float = 0.0) -> int:
    """Send a request by hand (to be slow or oversized on purpose); returns the status the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(reader.read(64))
    try:
        writer.write(head)
        await writer.drain()
        for part in body_parts:
            if answer.done():
                break
            writer.write(part)
            await writer.drain()
            if pause_s:
                await asyncio.wait([answer], timeout=pause_s)
    except ConnectionError:
        pass  # the server answered and closed while the body was still coming: the answer is what counts
    try:
        status_line = await asyncio.wait_for(answer, BODY_TIMEOUT_S + 30)
    finally:
        writer.close()
    return int(status_line.split(b" ")[1]) if status_line.startswith(b"HTTP/1.1 ") else -1


async def oversized(port: int, declared: bool) -> int:
    body = b"x" * 65536
    if declared:
        head = (
            "POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES + 1_000_000}\r\n\r\n"
        ).encode()
        return await raw_request(port, head, [body])
    start, content_type = multipart("big.png", b"")  # a valid part that goes on and on: only its size is wrong
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    opening = start[: start.index(b"\r\n\r\n") + 4]
    chunks = [opening, *[body] * (MAX_REQUEST_BYTES // len(body) + 20)]
    return await raw_request(port, head, [b"%x\r\n" % len(part) + part + b"\r\n" for part in chunks])


async def slow_upload(port: int, content: bytes) -> int:
    body, content_type = multipart("slow.png", content)
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    half = len(body) // 2
    return await raw_request(port, head, [body[:half], *[body[i : i + 1] for i in range(half, len(body))]], pause_s=2)


class Soak:
    """The clients, the monitor and what they saw."""

    def __init__(self, port: int, server: subprocess.Popen, cases: dict, seconds: float) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port, self.server, self.cases = port, server, cases
        self.deadline = time.monotonic() + seconds
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.sent: Counter = Counter()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.problems: list[str] = []
        self.health_s: list[float] = []
        self.rss_mb: list[float] = []

    async def client(self, index: int) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=BODY_TIMEOUT_S + 60) as http:
            turn = index
            while time.monotonic() < self.deadline:
                kind = "slow" if index < 2 else ROTATION[turn % len(ROTATION)]
                turn += 1
                self.sent[kind] += 1
                started = time.monotonic()
                try:
                    status, label, expected = await self.send(http, kind, turn)
                except (httpx.HTTPError, OSError) as error:
                    self.problems.append(f"{kind}: transport error {type(error).__name__}: {error}")
                    continue
                self.latencies[kind].append(time.monotonic() - started)
                self.statuses[kind][status] += 1
                if status != EXPECTED[kind]:
                    self.problems.append(f"{kind}: HTTP {status}, expected {EXPECTED[kind]}")
                elif expected is not None and label != expected:
                    self.problems.append(f"{kind}: label {label!r}, offline {expected!r}")

    async def send(self, http, kind: str, turn: int) -> tuple[int, str | None, str | None]:
        if kind == "oversized":
            return await oversized(self.port, declared=self.sent[kind] % 2 == 0), None, None
        if kind == "slow":
            return await slow_upload(self.port, self.cases["good"][0][1]), None, None
        name, content, expected = self.cases[kind][turn % len(self.cases[kind])]
        uploads = [("files", (name, content, "image/png"))] * (16 if kind == "webp16" else 1)
        answer = await http.post(f"{self.url}/v1/predict?top_k=1", files=uploads)
        label = answer.json()["predictions"][0]["labels"][0] if answer.status_code == 200 else None
        return answer.status_code, label, expected

    async def idle_sockets(self, count: int) -> None:
        """Hold `count` connections that never send a byte; reopen each one the server closes."""
        self.idle_reopened = 0

        async def hold() -> None:
            while time.monotonic() < self.deadline:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    left = max(0.1, self.deadline - time.monotonic())
                    await asyncio.wait_for(reader.read(1 << 16), left)  # b"" (or a 503) when the server lets go
                    self.idle_reopened += 1
                except TimeoutError:
                    pass
                finally:
                    writer.close()

        await asyncio.gather(*(hold() for _ in range(count)), return_exceptions=True)

    async def monitor(self) -> None:
        import httpx

        status_file = Path(f"/proc/{self.server.pid}/status")
        async with httpx.AsyncClient(timeout=10) as http:
            while time.monotonic() < self.deadline:
                self.rss_mb.append(_proc_kb(status_file, "VmRSS") / 1024)
                started = time.monotonic()
                try:
                    ok = (await http.get(f"{self.url}/healthz")).status_code == 200
                except httpx.HTTPError as error:
                    ok = False
                    self.problems.append(f"healthz: {type(error).__name__}")
                self.health_s.append(time.monotonic() - started)
                if not ok:
                    self.problems.append("healthz: not 200")
                await asyncio.sleep(0.25)


def _proc_kb(status_file: Path, field: str) -> int:
    for line in status_file.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", type=Path, help="an .onnx file (default: train and export the tiny model)")
    parser.add_argument("--idle", type=int, default=40, help="idle sockets held open the whole time")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-hostile-"))
    model = args.model or tiny_model(work)
    cases = payloads(work, model)
    port = free_port()
    server = start_server(model, port)
    idle_mb = _proc_kb(Path(f"/proc/{server.pid}/status"), "VmRSS") / 1024
    soak = Soak(port, server, cases, args.seconds)
    started = time.monotonic()
    try:

        async def run() -> None:
            await asyncio.gather(
                soak.monitor(), soak.idle_sockets(args.idle), *(soak.client(index) for index in range(args.clients))
            )

        asyncio.run(run())
        alive = server.poll() is None
        peak_mb = _proc_kb(Path(f"/proc/{server.pid}/status"), "VmHWM") / 1024 if alive else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # What memory may hold at most (ServeSettings defaults): the idle service, one request body per connection
    # uvicorn admits while the multipart parser spools it (<= 1 MB per file in memory, the rest on disk), per
    # decoding thread one upload, and one 40 MP picture being decoded (the pixel gate admits one at a time) at
    # up to 25 bytes per pixel (a lossless WebP's decode buffers and its RGB copy: about 24 measured here).
    cores = len(os.sched_getaffinity(0))
    bound_mb = idle_mb + 64 * 1.0 + cores * MAX_REQUEST_BYTES / 2**20 + 40 * 25
    bad = {kind: dict(counts) for kind, counts in soak.statuses.items() if EXPECTED[kind] != 200}
    good = {kind: dict(counts) for kind, counts in soak.statuses.items() if EXPECTED[kind] == 200}
    result = {
        "protocol": f"{args.clients} clients for {args.seconds:g} s against `tlearn serve` (defaults, ONNX fp32, "
        "test_efficientnet); machine shared with other work, so latencies are contended",
        "seconds": round(time.monotonic() - started, 1),
        "crashed": not alive,
        "requests": {kind: sum(counts.values()) for kind, counts in soak.statuses.items()},
        "good_statuses": good,
        "bad_statuses": bad,
        "problems": soak.problems[:20],
        "problem_count": len(soak.problems),
        "p50_latency_s": {kind: round(float(np.median(values)), 3) for kind, values in soak.latencies.items()},
        "p99_latency_s": {kind: round(float(np.quantile(values, 0.99)), 3) for kind, values in soak.latencies.items()},
        "idle_sockets": args.idle,
        "idle_sockets_closed_by_server": getattr(soak, "idle_reopened", 0),
        "healthz_max_s": round(max(soak.health_s), 3),
        "healthz_checks": len(soak.health_s),
        "rss_idle_mb": round(idle_mb, 1),
        "rss_peak_mb": None if peak_mb is None else round(peak_mb, 1),
        "rss_bound_mb": round(bound_mb, 1),
    }
    save("serve_hostile", result)
    failures = []
    if not alive:
        failures.append("the service crashed")
    if soak.problems:
        failures.append(f"{len(soak.problems)} unexpected answers, e.g. {soak.problems[0]}")
    if result["healthz_max_s"] >= HEALTH_LIMIT_S:
        failures.append(f"/healthz took {result['healthz_max_s']} s")
    if peak_mb is not None and peak_mb > bound_mb:
        failures.append(f"peak RSS {peak_mb:.0f} MB over the bound {bound_mb:.0f} MB")
    if not all(soak.statuses[kind][EXPECTED[kind]] for kind in EXPECTED):
        failures.append("some kinds of request were never answered as expected: " + json.dumps(result["requests"]))
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))
    print(f"ok: peak RSS {peak_mb:.0f} MB (bound {bound_mb:.0f} MB), /healthz max {result['healthz_max_s']} s")


if __name__ == "__main__":
    main()
