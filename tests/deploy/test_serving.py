"""The HTTP service: every route and error through TestClient, a real `tlearn serve` process, and the web page."""

from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from helpers import colour_image, free_port, png_with_size, run_cli, served_model
from tlearn.deploy.serving import ServeSettings, create_app
from tlearn.engines.loading import load_engine


def png(colour: tuple[int, int, int], seed: int = 0, shape: str = "square") -> bytes:
    buffer = io.BytesIO()
    colour_image(colour, size=64, seed=seed, shape=shape).save(buffer, format="PNG")
    return buffer.getvalue()


LOCAL = "http://localhost"  # the service answers loopback Host names only (DNS rebinding protection)
RED, BLUE = png((220, 30, 30)), png((30, 30, 220), shape="circle")


def wait_until_ready(client: TestClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def engine(exported_model):
    return load_engine(exported_model.onnx)


@pytest.fixture
def client(engine):
    with TestClient(
        create_app(lambda: engine, ServeSettings(max_request_bytes=200_000, max_files=4)), base_url=LOCAL
    ) as client:
        wait_until_ready(client)
        yield client


def test_predict_one_or_many_images_with_top_k(client):
    answer = client.post("/v1/predict", files=[("files", ("red.png", RED, "image/png"))])
    assert answer.status_code == 200
    body = answer.json()
    assert body["predictions"] == [
        {
            "file": "red.png",
            "labels": ["red", "blue"],
            "probabilities": pytest.approx(body["predictions"][0]["probabilities"]),
        }
    ]
    assert body["predictions"][0]["probabilities"][0] > 0.5 and body["model"]["engine"] == "onnx"
    assert body["model"]["name"] == "model" and re.fullmatch(r"[0-9a-f]{12}", body["model"]["version"])
    assert {"decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_images"} <= set(body["timing"])
    answer = client.post(
        "/v1/predict?top_k=1", files=[("files", ("a.png", BLUE, "image/png")), ("files", ("b.png", RED, "image/png"))]
    )
    assert [(p["file"], p["labels"]) for p in answer.json()["predictions"]] == [("a.png", ["blue"]), ("b.png", ["red"])]


def test_model_health_and_page(client, exported_model):
    model = client.get("/v1/model").json()
    assert model["classes"] == ["blue", "red"] and model["input_size"] == [160, 160]
    assert model["arch"] == "test_efficientnet" and model["backbone"]["arch"] == "test_efficientnet"
    assert model["metrics"]["val"]["accuracy"] > 0.9 and model["precision"] == "fp32"
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="picker"' in page.text and "/v1/predict" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN: works offline


@pytest.mark.parametrize(
    "files, query, status, words",
    [
        ([("files", ("junk.jpg", b"<html>not an image</html>", "image/jpeg"))], "", 415, ["junk.jpg", "not an image"]),
        (
            [("files", ("ok.png", RED, "image/png")), ("files", ("cut.png", RED[:200], "image/png"))],
            "",
            415,
            ["cut.png", "truncated"],
        ),
        (
            [("files", ("bomb.png", png_with_size(100_000, 100_000), "image/png"))],
            "",
            413,
            ["bomb.png", "too many pixels"],
        ),
        ([("files", ("empty.png", b"", "image/png"))], "", 415, ["empty.png", "empty file"]),
        ([("files", ("big.bin", b"x" * 300_000, "image/png"))], "", 413, ["request too large"]),
        ([("files", (f"{i}.png", RED, "image/png")) for i in range(5)], "", 413, ["too many files"]),
        ([("other", ("red.png", RED, "image/png"))], "", 422, ["files"]),
        ([("files", ("red.png", RED, "image/png"))], "?top_k=0", 422, ["top_k"]),
    ],
)
def test_bad_requests_get_clear_errors_and_the_service_keeps_answering(client, files, query, status, words):
    answer = client.post(f"/v1/predict{query}", files=files)
    assert answer.status_code == status, answer.text
    assert all(word in answer.text for word in words), answer.text
    assert client.post("/v1/predict", files=[("files", ("red.png", RED, "image/png"))]).status_code == 200


def test_bodies_without_a_length_are_limited_while_streaming(client):
    def chunks():
        for _ in range(40):
            yield b"0" * 10_000

    answer = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "request too large" in answer.text
    assert client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"}).status_code == 422


def test_readiness_follows_loading(engine):
    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return engine

    with TestClient(create_app(slow_loader), base_url=LOCAL) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503 and client.get("/readyz").json()["status"] == "loading"
        assert client.post("/v1/predict", files=[("files", ("red.png", RED, "image/png"))]).status_code == 503
        release.set()
        wait_until_ready(client)
        assert client.post("/v1/predict", files=[("files", ("red.png", RED, "image/png"))]).status_code == 200


def test_a_model_that_fails_to_load_is_reported_not_ready(tmp_path):
    def broken_loader():
        return load_engine(tmp_path / "missing.onnx")

    with TestClient(create_app(broken_loader), base_url=LOCAL) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        readiness = client.get("/readyz")
        assert readiness.status_code == 503 and "no such ONNX file" in readiness.json()["error"]
        assert client.get("/healthz").status_code == 200 and client.get("/v1/model").status_code == 503


class GatedEngine:
    """The real engine, whose model calls wait at a gate once it is set (to line requests up without sleeping)."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def probabilities(self, pixels, *, flip=False):
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return self._engine.probabilities(pixels, flip=flip)


def test_concurrent_requests_are_micro_batched(engine):
    gated = GatedEngine(engine)
    app = create_app(lambda: gated, ServeSettings(batch_wait_ms=100, max_batch_size=8))
    with TestClient(app, base_url=LOCAL) as client:
        wait_until_ready(client)

        def post(index: int) -> dict:
            image = RED if index % 2 else BLUE
            return client.post("/v1/predict?top_k=1", files=[("files", (f"{index}.png", image, "image/png"))]).json()

        gated.gate = threading.Event()
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(post, 0)
            assert gated.entered.wait(30)  # request 0 is inside the model; the next seven queue up behind it
            rest = [pool.submit(post, index) for index in range(1, 8)]
            deadline = time.monotonic() + 30
            while app.state.service.batcher.queued_jobs < 7:
                assert time.monotonic() < deadline, "the requests never queued"
                time.sleep(0.01)
            gated.gate.set()
            answers = [first.result(), *(future.result() for future in rest)]
    assert [a["predictions"][0]["labels"] for a in answers] == [["blue"], ["red"]] * 4
    assert answers[0]["timing"]["batch_requests"] == 1
    assert all(a["timing"]["batch_requests"] == 7 and a["timing"]["batch_images"] == 7 for a in answers[1:])


@pytest.fixture(scope="module")
def live_server(exported_model):
    """`tlearn serve MODEL.onnx` as a real process on a free loopback port; stopped after the module."""
    with served_model(exported_model.onnx) as url:
        yield url


def test_a_real_server_answers_over_http(live_server):
    files = [("files", ("blue.png", BLUE, "image/png")), ("files", ("red.png", RED, "image/png"))]
    answer = httpx.post(f"{live_server}/v1/predict?top_k=1", files=files, timeout=30)
    assert answer.status_code == 200
    assert [p["labels"] for p in answer.json()["predictions"]] == [["blue"], ["red"]]
    assert (
        httpx.post(
            f"{live_server}/v1/predict", files=[("files", ("x.jpg", b"nope", "image/jpeg"))], timeout=30
        ).status_code
        == 415
    )
    assert httpx.get(f"{live_server}/v1/model", timeout=30).json()["classes"] == ["blue", "red"]


def test_the_web_page_shows_the_label_of_an_uploaded_image(browser, live_server, tmp_path):
    image = tmp_path / "circle.png"
    image.write_bytes(BLUE)
    page = browser.new_page()
    try:
        page.goto(live_server)
        page.wait_for_selector("#model:has-text('2 classes')", timeout=30_000)
        page.set_input_files("#picker", str(image))
        top = page.wait_for_selector(".card .bar", timeout=30_000)
        assert top.get_attribute("data-label") == "blue"
        assert page.locator(".card img").get_attribute("alt") == "circle.png"
        assert "1 image(s)" in page.locator("#status").inner_text()
    finally:
        page.close()


def test_serve_refuses_a_missing_or_mismatched_model_before_starting(capsys, exported_model, tmp_path):
    code, _, err = run_cli(capsys, "serve", tmp_path / "missing.onnx", "--port", free_port())
    assert code == 2 and "no such ONNX file" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "serve", exported_model.run, "--engine", "onnx", "--port", free_port())
    assert code == 2 and "needs an .onnx file" in err
