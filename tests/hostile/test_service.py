"""`tlearn serve` against hostile requests and careless clients: bounded memory and time, clear 4xx/5xx
answers, and the service answers the next request every time."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from PIL import Image

from helpers import colour_image, png_with_size, run_cli
from tlearn.data.images import ImageDecodeError, ImageTooLargeError
from tlearn.deploy import pixels, serving
from tlearn.deploy.guards import BodyLimit, HostCheck
from tlearn.deploy.server import server_config, serving_settings
from tlearn.deploy.serving import DEFAULT_UPLOAD_PIXELS, ServeSettings, create_app
from tlearn.engines.loading import load_engine

LOCAL = "http://localhost"


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


RED = png(colour_image((220, 30, 30), size=64))
BLUE = png(colour_image((30, 30, 220), size=64, shape="circle"))
THIN = png(Image.new("L", (100_000, 1)))  # a few hundred bytes; resized to 182 pixels high it would be 3 gigapixels


class ControlledEngine:
    """The real engine, with its model calls counted, and on demand held at a gate, failing or answering badly."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.batch_sizes: list[int] = []
        self.failure: str | None = None  # None, "raise", "rows" or "memory"
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def probabilities(self, pixels: np.ndarray, *, flip: bool = False) -> np.ndarray:
        self.batch_sizes.append(len(pixels))
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        if self.failure == "raise":
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")
        if self.failure == "memory":
            raise MemoryError
        answer = self._engine.probabilities(pixels, flip=flip)
        return answer[:-1] if self.failure == "rows" else answer


@pytest.fixture(scope="module")
def engine(exported_model):
    return load_engine(exported_model.onnx)


@pytest.fixture
def controlled(engine) -> ControlledEngine:
    return ControlledEngine(engine)


@contextmanager
def serving_app(loader, settings: ServeSettings | None = None, **client_options) -> Iterator[TestClient]:
    app = create_app(loader, settings or ServeSettings())
    with TestClient(app, base_url=LOCAL, **client_options) as client:
        while client.get("/readyz").json()["status"] == "loading":
            time.sleep(0.01)  # loading happens in a background thread
        yield client


def post(client, *files: tuple[str, bytes], query: str = "") -> httpx.Response:
    return client.post(
        f"/v1/predict{query}", files=[("files", (name, content, "image/png")) for name, content in files]
    )


def still_serves(client) -> bool:
    answer = post(client, ("red.png", RED), query="?top_k=1")
    return answer.status_code == 200 and answer.json()["predictions"][0]["labels"] == ["red"]


# --- images refused before they are allocated ---------------------------------------------------------------


def test_an_extreme_aspect_ratio_is_refused_before_resizing(engine):
    with serving_app(lambda: engine) as client:
        answer = post(client, ("thin.png", THIN), ("red.png", RED))
        assert answer.status_code == 413, answer.text
        files = answer.json()["detail"]["files"]
        assert files == [{"file": "thin.png", "reason": files[0]["reason"], "status": 413}]
        assert "aspect ratio" in files[0]["reason"] and "100000" in files[0]["reason"]
        assert still_serves(client)


def test_uploads_have_a_lower_pixel_limit_that_a_setting_raises(engine, capsys, monkeypatch):
    header_42mp = png_with_size(7000, 6000)  # a valid header with no pixel data behind it
    with serving_app(lambda: engine) as client:
        answer = post(client, ("big.png", header_42mp))
        assert answer.status_code == 413 and "limit 40,000,000" in answer.text
    with serving_app(lambda: engine, ServeSettings(max_image_pixels=50_000_000)) as client:
        answer = post(client, ("big.png", header_42mp))
        assert answer.status_code == 415 and "too many pixels" not in answer.text  # decoded, found truncated
    given = {}
    monkeypatch.setattr("tlearn.api.serve", lambda model, **options: given.update(options))
    assert run_cli(capsys, "serve", "m.onnx", "--max-image-mp", "50")[0] == 0
    assert given["settings"].max_image_pixels == 50_000_000
    assert ServeSettings().max_image_pixels == DEFAULT_UPLOAD_PIXELS == 40_000_000


class ColourModeError(ImageDecodeError):
    """A subclass the decoding library may add (any ImageDecodeError is a per-file 415)."""


class AspectRatioError(ImageTooLargeError):
    """Likewise for refusals of size (413)."""


class OutOfMemoryWhileDecoding(ImageDecodeError):
    """A failure of this attempt, not of the file (`transient`): the client is asked to retry (503)."""

    transient = True


@pytest.mark.parametrize(
    "raised, status, words",
    [
        (ColourModeError("unsupported colour mode"), 415, "unsupported colour mode"),
        (AspectRatioError("extreme aspect ratio"), 413, "extreme aspect ratio"),
        (MemoryError(), 503, "not enough memory"),
        (OutOfMemoryWhileDecoding("out of memory while decoding"), 503, "out of memory while decoding"),
        (RuntimeError("a decoder bug"), 415, "cannot be decoded (RuntimeError)"),
    ],
)
def test_any_decoding_failure_is_a_per_file_answer_and_the_next_request_is_served(
    engine, monkeypatch, raised, status, words
):
    real_decode = serving.EvalPreprocess.from_file

    def decode(preprocess, content):
        if content == BLUE:
            raise raised
        return real_decode(preprocess, content)

    monkeypatch.setattr(serving.EvalPreprocess, "from_file", decode)
    with serving_app(lambda: engine) as client:
        answer = post(client, ("fine.png", RED), ("bad.png", BLUE))
        assert answer.status_code == status and words in answer.text
        assert [item["file"] for item in answer.json()["detail"]["files"]] == ["bad.png"]
        assert ("retry-after" in answer.headers) == (status == 503)
        assert still_serves(client)


def lossless_webp(side: int) -> bytes:
    """A one-colour lossless WebP: a few hundred bytes that declare side x side pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format="WEBP", lossless=True)
    return buffer.getvalue()


def test_a_request_whose_images_declare_too_many_pixels_is_413_before_they_are_all_decoded(engine, monkeypatch):
    """Tiny files, huge pictures: the request's budget is counted on the headers, so the images beyond it are
    refused without being decoded, and a request within it is answered."""
    real_decode, decoded = serving.EvalPreprocess.from_file, []

    def decode(preprocess, content):
        decoded.append(len(content))
        return real_decode(preprocess, content)

    monkeypatch.setattr(serving.EvalPreprocess, "from_file", decode)
    picture = lossless_webp(1000)  # 1 MP in well under 1 KB
    assert len(picture) < 1024
    with serving_app(lambda: engine, ServeSettings(max_request_pixels=3_000_000)) as client:
        answer = post(client, *((f"big{n}.webp", picture) for n in range(8)))
        assert answer.status_code == 413, answer.text
        assert "declare more than 3 MP in all (this one 1000x1000)" in answer.text
        assert len(decoded) <= 3  # the budget's worth at most; the other 5 were refused on their headers
        decoded.clear()
        assert post(client, ("a.webp", picture), ("b.webp", picture)).status_code == 200
        assert len(decoded) == 2
        assert still_serves(client)


def test_a_file_that_takes_too_long_to_decode_is_413_and_the_service_goes_on(engine, monkeypatch):
    """Stopped at the decode time limit (checked in the decoding thread) with a reason; never "retry"."""
    noise = np.random.default_rng(0).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", progressive=True, quality=90)
    monkeypatch.setattr("tlearn.data.images.MAX_DECODE_CPU_SECONDS", 0.01)
    with serving_app(lambda: engine) as client:
        answer = post(client, ("slow.jpg", buffer.getvalue()), ("red.png", RED))
        assert answer.status_code == 413, answer.text
        files = answer.json()["detail"]["files"]
        assert files == [{"file": "slow.jpg", "reason": files[0]["reason"], "status": 413}]
        assert "decoding took more than 0.01 CPU seconds" in files[0]["reason"]
        assert "retry-after" not in answer.headers
        assert still_serves(client)


def test_big_pictures_are_decoded_one_at_a_time_whatever_the_threads(engine, monkeypatch):
    """Two 1 MP WebPs in one request, decoding threads to spare and a 1.5 MP gate: they are never decoded at
    the same moment; a picture declaring more than the upload limit is refused without waiting for the gate."""

    real_decode, inside, most = serving.EvalPreprocess.from_file, [0], [0]

    def decode(preprocess, content):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.1)  # long enough for a second thread to start decoding if it were let in
        try:
            return real_decode(preprocess, content)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(serving.EvalPreprocess, "from_file", decode)
    monkeypatch.setattr(serving, "PixelGate", lambda limit: pixels.PixelGate(1_500_000))
    picture = lossless_webp(1000)
    with serving_app(lambda: engine, ServeSettings(decode_threads=4)) as client:
        assert post(client, ("a.webp", picture), ("b.webp", picture)).status_code == 200
        assert most[0] == 1
        most[0] = 0
        assert post(client, ("a.png", RED), ("b.png", RED), ("c.png", RED)).status_code == 200
        assert most[0] > 1  # small pictures are decoded side by side
    with serving_app(lambda: engine, ServeSettings(max_image_pixels=500_000)) as client:
        answer = post(client, ("big.webp", picture))
        assert answer.status_code == 413 and still_serves(client)


def test_the_gate_is_told_which_client_each_picture_comes_from(engine, monkeypatch):
    """The gate's per-client turns (tests/deploy/test_pixels.py) only work if the service names the client."""
    clients = []

    class RecordingGate(pixels.PixelGate):
        def admitted(self, size, client=None):
            clients.append(client)
            return super().admitted(size, client)

    monkeypatch.setattr(serving, "PixelGate", RecordingGate)
    app = create_app(lambda: engine, ServeSettings())
    with TestClient(peer_from_header(app), base_url=LOCAL) as client:
        while client.get("/readyz").json()["status"] == "loading":
            time.sleep(0.01)
        files = [("files", ("red.png", RED, "image/png")), ("files", ("blue.png", BLUE, "image/png"))]
        assert client.post("/v1/predict", files=files, headers={"x-peer": "10.0.0.9"}).status_code == 200
    assert clients == ["10.0.0.9", "10.0.0.9"]


def test_decoding_threads_do_not_grow_with_the_host(monkeypatch):
    monkeypatch.setattr(serving, "_cores", lambda: 64)
    assert serving._Service(ServeSettings()).decoder._max_workers == serving.MAX_DECODE_THREADS == 4
    assert serving._Service(ServeSettings(decode_threads=8)).decoder._max_workers == 8  # unless asked


def test_running_out_of_memory_anywhere_in_a_request_is_503_not_a_crash(engine, monkeypatch):
    async def no_memory(*args, **kwargs):
        raise MemoryError

    with serving_app(lambda: engine, raise_server_exceptions=False) as client:
        monkeypatch.setattr(serving, "_decode_all", no_memory)
        answer = post(client, ("red.png", RED))
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        monkeypatch.undo()
        assert still_serves(client)


# --- the micro-batcher survives any failure; readiness follows the model ------------------------------------


@pytest.mark.parametrize(
    "failure, reason",
    [
        ("raise", "RuntimeError: [ONNXRuntimeError]"),
        ("rows", "expected 1 rows of probabilities, got (0, 2)"),
        ("memory", "MemoryError"),
    ],
)
def test_a_failing_model_call_is_500_with_the_reason_and_the_next_request_is_served(controlled, failure, reason):
    with serving_app(lambda: controlled) as client:
        controlled.failure = failure
        answer = post(client, ("red.png", RED))
        assert answer.status_code == 500 and reason in answer.json()["detail"]
        controlled.failure = None
        assert still_serves(client)
        assert client.get("/readyz").status_code == 200


def test_readiness_turns_503_while_the_model_cannot_answer_and_comes_back(controlled):
    with serving_app(lambda: controlled) as client:
        controlled.failure = "raise"  # every call fails now, the health probe too
        assert post(client, ("red.png", RED)).status_code == 500
        readiness = client.get("/readyz")
        assert readiness.status_code == 503 and "fails on a known-good input" in readiness.json()["error"]
        assert client.get("/healthz").status_code == 200
        controlled.failure = None  # the model recovers: the next readiness check probes it again
        assert client.get("/readyz").status_code == 200
        assert still_serves(client)


def test_a_large_request_is_split_into_model_calls_of_at_most_the_batch_size(controlled):
    settings = ServeSettings(max_batch_size=8, batch_wait_ms=0)
    with serving_app(lambda: controlled, settings) as client:
        controlled.batch_sizes.clear()
        answer = post(client, *[(f"{i}.png", RED if i % 2 else BLUE) for i in range(64)], query="?top_k=1")
    assert answer.status_code == 200
    assert sorted(controlled.batch_sizes) == [8] * 8
    body = answer.json()
    assert [p["labels"][0] for p in body["predictions"]] == ["blue", "red"] * 32
    assert body["timing"]["model_calls"] == 8 and body["timing"]["batch_images"] == 8


def test_a_full_queue_answers_503_with_retry_after(controlled):
    settings = ServeSettings(max_pending_requests=1)
    with serving_app(lambda: controlled, settings) as client, ThreadPoolExecutor(1) as pool:
        controlled.gate = threading.Event()
        first = pool.submit(post, client, ("red.png", RED))
        assert controlled.entered.wait(30)  # the first request holds the only slot, inside the model
        second = post(client, ("blue.png", BLUE))
        assert second.status_code == 503 and second.headers["retry-after"] == "1" and "busy" in second.text
        controlled.gate.set()
        assert first.result().status_code == 200
        assert still_serves(client)


def peer_from_header(app):
    """The app behind an ASGI wrapper that takes a request's client address from its `x-peer` header: one
    TestClient (one event loop, as the service's queues need) speaking for several clients."""

    async def wrapped(scope, receive, send):
        peer = dict(scope.get("headers") or []).get(b"x-peer")
        await app({**scope, "client": (peer.decode(), 50000)} if peer else scope, receive, send)

    return wrapped


def test_one_client_holds_at_most_its_share_of_the_queue_and_others_are_still_served(controlled):
    app = create_app(lambda: controlled, ServeSettings(max_pending_requests=4, max_pending_per_client=1))
    with TestClient(peer_from_header(app), base_url=LOCAL) as client, ThreadPoolExecutor(2) as pool:
        while client.get("/readyz").json()["status"] == "loading":
            time.sleep(0.01)
        admission = app.state.service.admission

        def post_as(peer, name, content):
            return client.post("/v1/predict", files=[("files", (name, content, "image/png"))], headers={"x-peer": peer})

        controlled.gate = threading.Event()
        first = pool.submit(post_as, "10.0.0.1", "red.png", RED)
        assert controlled.entered.wait(30)  # the first request holds this client's one slot, inside the model
        again = post_as("10.0.0.1", "blue.png", BLUE)
        assert again.status_code == 503 and again.headers["retry-after"] == "1"
        assert "this client already has 1 requests being served" in again.text
        second = pool.submit(post_as, "10.1.2.3", "blue.png", BLUE)  # another client is taken on meanwhile
        deadline = time.monotonic() + 30
        while admission.by_client.get("10.1.2.3") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert admission.by_client == {"10.0.0.1": 1, "10.1.2.3": 1}
        controlled.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert admission.by_client == {}


def test_a_refused_upload_gives_its_queue_slot_back(engine):
    """With a one-slot queue, a request refused while decoding (415, 413) must free the slot: else every later
    request would be answered 503 "busy"."""
    with serving_app(lambda: engine, ServeSettings(max_pending_requests=1)) as client:
        for _ in range(3):
            refused = post(client, ("broken.png", b"not an image at all"))
            assert refused.status_code == 415 and "broken.png" in refused.text
        assert post(client, ("red.png", RED)).status_code == 200


# --- what answers reveal, and who may ask ------------------------------------------------------------------


def test_answers_name_files_never_directories(exported_model, engine):
    with serving_app(lambda: engine) as client:
        answer = post(client, ("/home/someone/private/red.png", RED), ("C:\\Users\\someone\\blue.png", BLUE))
        assert [p["file"] for p in answer.json()["predictions"]] == ["red.png", "blue.png"]
        model = client.get("/v1/model")
        assert model.status_code == 200 and model.json()["backbone"]["weights_path"] == "test_efficientnet.safetensors"
        root = str(exported_model.run.parent)
        for route in ("/v1/model", "/readyz"):
            assert root not in client.get(route).text
        assert root not in answer.text


def test_docs_and_openapi_are_off_unless_asked_for(engine):
    with serving_app(lambda: engine) as client:
        assert [client.get(route).status_code for route in ("/docs", "/redoc", "/openapi.json")] == [404] * 3
    with serving_app(lambda: engine, ServeSettings(docs=True)) as client:
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "host, allowed, status",
    [
        ("localhost", (), 200),
        ("localhost:8000", (), 200),
        ("127.0.0.1:8000", (), 200),
        ("[::1]:8000", (), 200),
        ("evil.example", (), 421),
        ("evil.example:8000", (), 421),
        ("127.0.0.1.evil.example", (), 421),
        ("myhost.lan:8000", ("myhost.lan",), 200),
        ("anything.example", ("*",), 200),
    ],
)
def test_a_foreign_host_header_is_refused(engine, host, allowed, status):
    """DNS rebinding: a page on evil.example resolves its own name to 127.0.0.1 and calls the service."""
    with serving_app(lambda: engine, ServeSettings(allowed_hosts=allowed)) as client:
        for route in ("/v1/model", "/"):
            answer = client.get(route, headers={"host": host})
            assert answer.status_code == status, (route, answer.text)
        if status == 421:
            assert "--allow-host" in answer.text
            assert post(client, ("red.png", RED)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "allowed", "status"),
    [
        ({"origin": "https://evil.example"}, (), 403),  # a page elsewhere posting a form or a fetch
        ({"sec-fetch-site": "cross-site"}, (), 403),  # a browser that names the site but sends no Origin
        ({"sec-fetch-site": "same-site"}, (), 403),  # a sibling subdomain's page, no Origin
        ({"origin": "http://localhost:3000", "sec-fetch-site": "same-site"}, (), 403),  # another port
        ({"origin": "http://localhost", "sec-fetch-site": "same-origin"}, (), 200),  # the service's own page
        ({"origin": "null"}, (), 200),  # a file:// page or a sandboxed frame says nothing about a site
        ({}, (), 200),  # curl and Python clients: not browsers
        ({"origin": "https://App.example/", "sec-fetch-site": "cross-site"}, ("https://app.example",), 200),
        ({"origin": "https://evil.example"}, ("*",), 200),
    ],
)
def test_a_post_from_another_sites_page_is_refused_unless_its_origin_is_allowed(engine, headers, allowed, status):
    """Any web page a visitor has open can POST to a service on their machine (the browser only hides the
    answer): another site's request is 403 before any byte of it is decoded, unless `--allow-origin` names it."""
    with serving_app(lambda: engine, ServeSettings(allowed_origins=allowed)) as client:
        files = [("files", ("red.png", RED, "image/png"))]
        answer = client.post("/v1/predict", files=files, headers=headers)
        assert answer.status_code == status, answer.text
        if status == 403:
            assert "cross-site request" in answer.text and "--allow-origin" in answer.text
            assert client.get("/v1/model", headers=headers).status_code == 200  # reading is not refused
            assert still_serves(client)


def test_serve_flags_reach_the_service_settings(capsys, monkeypatch):
    given = {}
    monkeypatch.setattr("tlearn.api.serve", lambda model, **options: given.update(options))
    flags = ["--max-queue", "8", "--allow-host", "box.lan", "--allow-host", "box", "--docs", "--max-request-mb", "2"]
    flags += ["--allow-origin", "https://app.example"]
    assert run_cli(capsys, "serve", "m.onnx", *flags)[0] == 0
    settings = given["settings"]
    assert (settings.max_pending_requests, settings.allowed_hosts, settings.docs) == (8, ("box.lan", "box"), True)
    assert settings.allowed_origins == ("https://app.example",)
    assert settings.max_request_bytes == 2 * 1024 * 1024
    assert run_cli(capsys, "serve", "m.onnx")[0] == 0
    assert given["settings"] == ServeSettings(max_request_bytes=10 * 1024 * 1024)  # the defaults, nothing else


def test_serve_binds_its_own_host_and_everything_when_public():
    assert "10.0.0.5" in serving_settings(ServeSettings(), "10.0.0.5").allowed_hosts
    assert "*" in serving_settings(ServeSettings(), "0.0.0.0").allowed_hosts


# --- slow and greedy clients, on a real socket ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def real_server(engine, settings: ServeSettings) -> Iterator[int]:
    """The app under uvicorn with the service's own connection settings, in a thread; yields its port."""
    port = free_port()
    server = uvicorn.Server(
        server_config(
            create_app(lambda: engine, settings), host="127.0.0.1", port=port, settings=settings, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            time.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def raw_connection(port: int, payload: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=20)
    connection.sendall(payload)
    return connection


def read_all(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (blocks until it does)."""
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_client_that_stops_sending_its_body_gets_408_and_others_are_served(engine):
    settings = ServeSettings(body_timeout_s=0.5)
    with real_server(engine, settings) as port:
        head = (
            b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 100000\r\n\r\n--x\r\n"
        )
        stalled = raw_connection(port, head)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200  # meanwhile
        with stalled:
            answer = read_all(stalled)
        assert answer.startswith(b"HTTP/1.1 408") and b"request body not received within 0.5 s" in answer
        files = [("files", ("red.png", RED, "image/png"))]
        assert httpx.post(f"http://127.0.0.1:{port}/v1/predict", files=files, timeout=30).status_code == 200


def test_connections_that_never_finish_their_headers_are_closed(engine):
    settings = ServeSettings(header_timeout_s=0.5)
    with real_server(engine, settings) as port:
        slow = [raw_connection(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(4)]
        try:  # each read returns when the header deadline closes the connection: no sleeping
            assert [read_all(connection) for connection in slow] == [b""] * 4
        finally:
            for connection in slow:
                connection.close()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200


def test_idle_connections_do_not_count_against_the_requests_served(engine):
    """More idle sockets than `limit_concurrency` requests: every request is still answered (uvicorn's own limit
    counted connections, so 64 idle sockets made every request, /healthz too, a 503)."""
    settings = ServeSettings(header_timeout_s=30, limit_concurrency=4)
    with real_server(engine, settings) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(12)]
        try:
            url = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            assert httpx.get(f"{url}/v1/model", timeout=5).status_code == 200
            files = [("files", ("red.png", RED, "image/png"))]
            assert httpx.post(f"{url}/v1/predict", files=files, timeout=30).status_code == 200
        finally:
            for connection in idle:
                connection.close()


def test_a_client_holding_too_many_connections_gets_503_with_retry_after_until_it_lets_go(engine):
    settings = ServeSettings(header_timeout_s=30, max_connections_per_client=3, retry_after_s=2)
    with real_server(engine, settings) as port:
        held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(3)]
        try:
            extra = socket.create_connection(("127.0.0.1", port), timeout=20)
            answer = read_all(extra)
            extra.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 2" in answer
            assert b"too many connections from this client" in answer
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + 10  # the server sees the closes asynchronously
        while (status := httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code) != 200:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)


def test_requests_beyond_the_limit_get_503_with_retry_after_but_healthz_always_answers(controlled):
    settings = ServeSettings(limit_concurrency=1, retry_after_s=3)
    with real_server(controlled, settings) as port, ThreadPoolExecutor(1) as pool:
        controlled.gate = threading.Event()
        url = f"http://127.0.0.1:{port}"
        files = [("files", ("red.png", RED, "image/png"))]
        holding = pool.submit(httpx.post, f"{url}/v1/predict", files=files, timeout=60)
        try:
            assert controlled.entered.wait(30)  # the one request allowed is in the model
            busy = httpx.get(f"{url}/v1/model", timeout=5)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "3" and "busy" in busy.json()["detail"]
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # a liveness probe never restarts it
        finally:
            controlled.gate.set()
        assert holding.result().status_code == 200
        assert httpx.get(f"{url}/v1/model", timeout=5).status_code == 200


def test_the_web_page_waits_and_retries_when_the_service_is_busy(controlled, browser, tmp_path):
    image = tmp_path / "circle.png"
    image.write_bytes(BLUE)
    with real_server(controlled, ServeSettings(max_pending_requests=1)) as port, ThreadPoolExecutor(1) as pool:
        controlled.gate = threading.Event()
        files = [("files", ("red.png", RED, "image/png"))]
        holding = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v1/predict", files=files, timeout=60)
        assert controlled.entered.wait(30)  # the only slot is taken: the page's upload is answered 503
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{port}")
            page.wait_for_selector("#model:has-text('2 classes')", timeout=30_000)
            page.set_input_files("#picker", str(image))
            page.wait_for_selector("#status:has-text('busy')", timeout=30_000)  # it read Retry-After and waits
            controlled.gate.set()
            top = page.wait_for_selector(".card .bar", timeout=30_000)  # ...then its retry is answered
            assert top.get_attribute("data-label") == "blue"
        finally:
            page.close()
        assert holding.result().status_code == 200


# --- the guards alone, in front of a tiny app (no model) ----------------------------------------------------


def run_async(coroutine):
    """asyncio.run in a fresh thread: the session's Playwright browser keeps an event loop on the main thread."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


def guarded(*, allowed: tuple[str, ...] = (), max_bytes: int = 100, timeout_s: float = 5.0) -> tuple[FastAPI, list]:
    """A two-route app behind the service's guards, in the service's order; and the requests that reached it."""
    reached: list[str] = []
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        reached.append("/")
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        reached.append("/echo")
        return {"size": len(await request.body())}

    app.add_middleware(BodyLimit, max_bytes=max_bytes, timeout_s=timeout_s)
    app.add_middleware(HostCheck, allowed=allowed)
    return app, reached


@pytest.mark.parametrize(
    "host, allowed, status",
    [
        ("LOCALHOST:8000", (), 200),  # host names are case-insensitive
        (" localhost ", (), 200),
        ("[::1]", (), 200),
        ("::1", (), 200),  # an IPv6 address without brackets or port
        ("Box.LAN:8000", ("box.lan:9000",), 200),  # an allowed name given with a port and in another case
        ("box.lan.evil.example", ("box.lan",), 421),
        ("[::1]:8000", (), 200),
        ("[::1", (), 421),  # a broken bracket is not the loopback address
        ("[localhostx", (), 421),  # ...nor a name hidden after one
        ("127.0.0.1:8000:1", (), 421),
        ("evil.example", ("*", "other"), 200),
        ("cam1.Factory.lan:8000", ("*.factory.lan",), 200),  # a wildcard admits every subdomain
        ("a.b.factory.lan", ("*.factory.lan",), 200),
        ("factory.lan", ("*.factory.lan",), 421),  # ...but not the domain itself
        ("evilfactory.lan", ("*.factory.lan",), 421),  # nor a name that merely ends the same way
    ],
)
def test_host_names_are_compared_without_port_or_case(host, allowed, status):
    """The Host check compares names the way browsers send them: any case, with or without a port, IPv6 in
    brackets; anything else is refused before the app sees the request."""
    app, reached = guarded(allowed=allowed)
    with TestClient(app, base_url=LOCAL) as client:
        answer = client.get("/", headers={"host": host})
    assert answer.status_code == status, answer.text
    assert reached == (["/"] if status == 200 else [])


def test_a_refused_host_is_named_in_a_bounded_message_with_the_fix():
    """The 421 names the refused host (cut to 100 characters: it is the client's text) and the flag to allow it."""
    app, _ = guarded()
    with TestClient(app, base_url=LOCAL) as client:
        answer = client.get("/", headers={"host": "Evil.Example:8000"})
        long_name = "a" * 150 + ".example"
        cut = client.get("/", headers={"host": long_name}).json()["detail"]
    assert answer.status_code == 421 and answer.json() == {
        "detail": "host 'evil.example' is not served here (protection against DNS rebinding); "
        "start the service with --allow-host evil.example to serve it under that name"
    }
    assert f"host {'a' * 100!r} is not served" in cut and "a" * 101 not in cut


def test_requests_without_a_host_header_and_other_scopes_pass_the_host_check():
    """HTTP/1.0 tools send no Host header and are served; lifespan events go through untouched."""
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    check = HostCheck(app, allowed=())
    run_async(check({"type": "http", "headers": []}, receive, send))
    run_async(check({"type": "lifespan"}, receive, send))
    run_async(check({"type": "http", "headers": [(b"host", b"evil.example")]}, receive, send))
    assert seen == ["http", "lifespan"] and [m.get("status") for m in sent if "status" in m] == [200, 421]


@pytest.mark.parametrize(
    "body, declared, status",
    [
        (b"x" * 100, None, 200),  # exactly the limit
        (b"x" * 101, None, 413),
        (b"x" * 100, "100", 200),
        (b"x" * 10, "101", 413),  # refused on the declared length alone
        (b"x" * 10, "ten", 200),  # a length that is not a number is no reason to refuse
    ],
)
def test_the_body_limit_counts_declared_and_received_bytes(body, declared, status):
    """A body may be as large as the limit and no larger, whether its length is declared or only streamed."""
    app, reached = guarded(max_bytes=100)
    headers = {"content-length": declared} if declared is not None else {}
    with TestClient(app, base_url=LOCAL) as client:
        answer = client.post("/echo", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    if status == 413:
        assert answer.json() == {"detail": "request too large (limit 9.53674e-05 MB; see --max-request-mb)"}
    else:
        assert answer.json() == {"size": len(body)}
    if declared == "101":
        assert reached == []  # refused before the app ran


def test_a_streamed_body_is_limited_by_the_sum_of_its_chunks():
    """Without a declared length the limit counts every chunk received: three chunks of 40 bytes exceed 100."""

    async def app(scope, receive, send):
        while (await receive()).get("more_body"):
            pass

    def chunks(count: int):
        messages = [{"type": "http.request", "body": b"x" * 40, "more_body": n < count - 1} for n in range(count)]

        async def receive():
            return messages.pop(0)

        return receive

    limit = BodyLimit(app, max_bytes=100, timeout_s=30.0)
    run_async(limit({"type": "http", "headers": []}, chunks(2), None))  # 80 bytes: within the limit
    with pytest.raises(HTTPException) as refused:
        run_async(limit({"type": "http", "headers": []}, chunks(3), None))
    assert refused.value.status_code == 413 and "request too large" in refused.value.detail


def test_a_body_that_does_not_arrive_in_time_is_408_and_other_scopes_are_not_limited():
    """The body's deadline counts from the request's start: a body still missing then is 408, one that comes in
    time reaches the app; lifespan scopes pass unguarded."""
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])
        while (await receive()).get("more_body"):
            pass

    async def stalled():
        await asyncio.Event().wait()  # the client never sends its body

    limit = BodyLimit(app, max_bytes=100, timeout_s=0.05)
    headers = [(b"content-length", b"50")]
    with pytest.raises(HTTPException) as raised:
        run_async(asyncio.wait_for(limit({"type": "http", "headers": headers}, stalled, None), 30))  # bounded
    assert raised.value.status_code == 408
    assert raised.value.detail == "request body not received within 0.05 s; send it faster or in parts"

    async def slow_but_in_time():
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x" * 50, "more_body": False}

    run_async(
        BodyLimit(app, max_bytes=100, timeout_s=30.0)({"type": "http", "headers": headers}, slow_but_in_time, None)
    )

    async def empty():
        return {"type": "lifespan.startup"}

    run_async(limit({"type": "lifespan", "headers": [(b"content-length", b"500")]}, empty, None))
    assert calls == ["http", "http", "lifespan"]  # the body that came in time reached the app
