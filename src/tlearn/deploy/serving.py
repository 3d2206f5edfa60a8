"""`tlearn serve`: the model behind an HTTP API (FastAPI on uvicorn) and a web page.

Routes: `POST /v1/predict` (multipart field `files`, repeatable; `?top_k=`), `GET /v1/model`, `GET /healthz`
(the process answers), `GET /readyz` (the model is loaded and warmed up), `GET /` (a page to drop images on).

The model loads in a background thread after the server starts, so liveness answers at once and readiness
says when predictions can be made. Uploads are decoded in worker threads and concurrent requests are
micro-batched (`tlearn.deploy.batching`), so the event loop never runs the model. Bad input never takes the service
down: an oversized request is 413, an undecodable file 415 and a decompression bomb 413, each naming the
file and the reason; a request without files is 422.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from tlearn import __version__
from tlearn.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, ImageTooLargeError
from tlearn.data.preprocess import EvalPreprocess
from tlearn.deploy.batching import MicroBatcher
from tlearn.engines.base import InferenceEngine
from tlearn.runs.model_dir import WEIGHTS_FILE

logger = logging.getLogger("tlearn.serve")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the service.

    Attributes:
        max_request_bytes: larger request bodies are refused with 413 before they are read.
        max_files: images per request.
        max_image_pixels: larger images (decompression bombs) are refused with 413 before decoding.
        max_batch_size: images per model call, all concurrent requests together.
        batch_wait_ms: how long a request waits for others to share its model call.

    Example:
        >>> tlearn.serve("ants.onnx", settings=ServeSettings(max_batch_size=16))  # doctest: +SKIP
    """

    max_request_bytes: int = 10 * 1024 * 1024
    max_files: int = 64
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0


class _Service:
    """What the routes share: the engine once loaded, its batcher, and why loading failed if it did."""

    def __init__(self) -> None:
        self.engine: InferenceEngine | None = None
        self.batcher: MicroBatcher | None = None
        self.identity: dict[str, str] = {}
        self.failure: str | None = None

    async def load(self, loader: Callable[[], InferenceEngine], settings: ServeSettings) -> None:
        """Load the model off the event loop, run one warm-up batch, then start batching."""
        try:
            engine = await asyncio.to_thread(loader)
            height, width = engine.preprocessing.input_size
            await asyncio.to_thread(engine.probabilities, np.zeros((1, height, width, 3), dtype=np.uint8))
        except Exception as error:  # any failure is reported by /readyz and logged; liveness stays up
            self.failure = f"{type(error).__name__}: {error}"
            logger.error("model failed to load: %s", self.failure)
            return
        self.identity = model_identity(engine)
        self.batcher = MicroBatcher(
            engine.probabilities, max_batch_size=settings.max_batch_size, max_wait_s=settings.batch_wait_ms / 1000
        )
        await self.batcher.start()
        self.engine = engine
        logger.info("model %s (%s engine) ready", self.identity["name"], engine.engine)

    def ready_engine(self) -> tuple[InferenceEngine, MicroBatcher]:
        if self.engine is None or self.batcher is None:
            raise HTTPException(503, self.failure or "the model is still loading; retry when /readyz answers 200")
        return self.engine, self.batcher


def create_app(loader: Callable[[], InferenceEngine], settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI application serving the engine that `loader` returns (called in the background at startup).

    Example:
        >>> from fastapi.testclient import TestClient
        >>> app = create_app(lambda: load_engine("model.onnx"))  # doctest: +SKIP
        >>> with TestClient(app) as client:  # doctest: +SKIP
        ...     client.post("/v1/predict", files=[("files", open("bee.jpg", "rb"))]).json()
    """
    service = _Service()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        loading = asyncio.create_task(service.load(loader, settings))
        yield
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        if service.batcher is not None:
            await service.batcher.stop()

    app = FastAPI(title="tlearn", version=__version__, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded and warmed up, 503 before (or if loading failed)."""
        if service.engine is not None:
            return JSONResponse({"status": "ready", "model": service.identity})
        status = "failed" if service.failure else "loading"
        return JSONResponse({"status": status, "error": service.failure}, status_code=503)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        """Classes, backbone, input size and the metrics of the run the model came from."""
        engine, _ = service.ready_engine()
        return describe_model(engine, service.identity)

    @app.post("/v1/predict")
    async def predict(
        files: list[UploadFile] = File(..., description="Images, repeat the field for several."),  # noqa: B008 - FastAPI's idiom
        top_k: int = Query(3, ge=1, description="Labels per image."),
    ) -> dict[str, Any]:
        """Top-k labels and probabilities for each uploaded image."""
        started = time.perf_counter()
        engine, batcher = service.ready_engine()
        if len(files) > settings.max_files:
            raise HTTPException(413, f"too many files ({len(files)} > {settings.max_files} per request)")
        contents = [(upload.filename or f"file {i + 1}", await upload.read()) for i, upload in enumerate(files)]
        pixels = await run_in_threadpool(_decode_all, contents, engine, settings.max_image_pixels)
        decoded = time.perf_counter()
        probabilities, timing = await batcher.submit(pixels)
        predictions = []
        for (name, _), row in zip(contents, probabilities, strict=True):
            top = engine.top_k(name, row, top_k)
            predictions.append({"file": name, "labels": top.labels, "probabilities": top.probabilities})
        return {
            "model": {**service.identity, "engine": engine.engine},
            "predictions": predictions,
            "timing": {
                "decode_ms": round(1000 * (decoded - started), 2),
                "queue_ms": round(timing.queue_ms, 2),
                "inference_ms": round(timing.inference_ms, 2),
                "batch_images": timing.batch_images,
                "batch_requests": timing.batch_requests,
                "total_ms": round(1000 * (time.perf_counter() - started), 2),
            },
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        """The web page: drop or pick images, see the top labels as bars next to their thumbnails."""
        return (resources.files("tlearn.deploy") / "web" / "index.html").read_text(encoding="utf-8")

    return app


def _decode_all(contents: list[tuple[str, bytes]], engine: InferenceEngine, max_pixels: int) -> np.ndarray:
    """(n, H, W, 3) uint8 pixels of the uploads; any unusable file fails the request, naming every bad file.

    Raises:
        HTTPException: 413 when an image has too many pixels, else 415, with each bad file and its reason.
    """
    prep = EvalPreprocess(engine.preprocessing, max_pixels=max_pixels)
    arrays, bad, too_large = [], [], False
    for name, content in contents:
        try:
            arrays.append(prep.from_file(content))
        except ImageDecodeError as error:
            bad.append({"file": name, "reason": str(error)})
            too_large |= isinstance(error, ImageTooLargeError)
    if bad:
        summary = "; ".join(f"{item['file']}: {item['reason']}" for item in bad)
        raise HTTPException(413 if too_large else 415, {"message": f"unusable image(s): {summary}", "files": bad})
    return np.stack(arrays)


def describe_model(engine: InferenceEngine, identity: dict[str, str]) -> dict[str, Any]:
    """What `GET /v1/model` answers."""
    config = engine.config
    return {
        **identity,
        "engine": engine.engine,
        "precision": engine.precision,
        "classes": engine.classes,
        "arch": config.arch,
        "backbone": config.backbone,
        "input_size": list(engine.preprocessing.input_size),
        "preprocessing": engine.preprocessing.to_dict(),
        "mode": config.mode,
        "temperature": config.temperature,
        "metrics": config.metrics,
        "created": config.created,
        "tlearn_version": config.tlearn_version,
    }


def model_identity(engine: InferenceEngine) -> dict[str, str]:
    """A name for the model (its run or file name) and a version (the first 12 hex digits of its weights' SHA-256)."""
    path = engine.path
    if path is None:
        return {"name": engine.config.arch, "version": "unknown"}
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    name = path.parent.name if path.is_dir() and path.name == "model" else path.stem if path.is_file() else path.name
    return {"name": name, "version": _sha256(weights)[:12]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, declared (Content-Length) or streamed."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())  # FastAPI passes HTTPExceptions through body parsing
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request too large (limit {self.max_bytes / 1024 / 1024:g} MB; see --max-request-mb)"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await JSONResponse({"detail": self._message()}, status_code=413)(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def run_server(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str | None = None,
    device: str = "auto",
    settings: ServeSettings = ServeSettings(),
    log_level: str = "info",
) -> None:
    """Serve a model directory or `.onnx` file over HTTP until interrupted.

    Raises:
        ModelFileError: the model cannot be found or does not fit the engine (checked before the server starts).

    Example:
        >>> run_server("runs/ants/ants.onnx", port=8000)  # doctest: +SKIP
    """
    import uvicorn

    from tlearn.engines.loading import check_engine, load_engine

    check_engine(model, engine=engine, device=device)
    app = create_app(lambda: load_engine(model, engine=engine, device=device), settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
