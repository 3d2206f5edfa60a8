"""`tlearn serve`: the model behind an HTTP API (FastAPI on uvicorn) and a web page.

Routes: `POST /v1/predict` (multipart field `files`, repeatable; `?top_k=`, `?reject=false`), `GET /v1/model`,
`GET /healthz` (the process answers), `GET /readyz` (the model is loaded and can answer), `GET /` (a page to
drop images on). Each prediction holds the top-k labels and probabilities; a multi-label model's adds its
`label_set` (every class reaching its threshold), a model with a reject rule's adds `unknown` and
`reject_score` (`tlearn.engines.base.Prediction.to_dict`, without the source's directory).

The model loads in a background thread after the server starts, so liveness answers at once and readiness
says when predictions can be made. Uploads are decoded in worker threads and concurrent requests are
micro-batched (`tlearn.deploy.batching`), so the event loop never runs the model.

Bad input and bad clients never take the service down, and memory stays bounded whatever arrives:

* a request body over `max_request_bytes` is 413 (by Content-Length before it is read, or while streaming);
  one that does not arrive within `body_timeout_s` is 408, and request headers that do not arrive within
  `header_timeout_s` close the connection, so slow clients cannot hold connections; one client holds at most
  `max_connections_per_client` connections, and at most `limit_concurrency` requests are served at once
  (idle connections do not count, and `/healthz` always answers): beyond either, 503 with `Retry-After`
  (`tlearn.deploy.server` binds the guarded protocol);
* at most `max_pending_requests` requests are decoded or wait for the model at once, at most
  `max_pending_per_client` of them from one client address (`tlearn.deploy.admission`); beyond, 503 with
  `Retry-After`; at most `decode_threads` images (one per core, at most 4, whatever the host) are decoded at
  once, and the images of one request may declare at most `max_request_pixels` in all (16 tiny lossless WebPs
  of 6300x6300 pixels fit in a 3 KB body and took 20 s and 1.8 GB to decode): beyond, 413 before decoding;
* an image over `max_image_pixels` (40 MP for uploads), or one whose resized copy would be (a 100000x1 PNG),
  is 413 before anything large is allocated, as is a file whose decoding takes more than 5 CPU seconds
  (`tlearn.data.images.MAX_DECODE_CPU_SECONDS`); a file that is not a decodable image is 415; running out of
  memory while decoding is 503 with `Retry-After` — each naming the file and the reason;
* a model failure is 500 with the reason and the next request is served; `/readyz` turns 503 when the model
  can no longer answer (see `MicroBatcher`); a model that gives NaN or infinite probabilities (damaged weights)
  is never answered with: 422 for the batch's requests while it still answers the probe, else 503, and one that
  does so on the warm-up input never becomes ready;
* a `Host` header other than this machine's loopback names (or `allowed_hosts`) is 421 (DNS rebinding), a
  POST from another site's page 403 unless `allowed_origins` lists it (`guards.OriginCheck`);
* answers never contain a directory, only file names; `/docs` and `/openapi.json` are off unless `docs`
  (they load scripts from a CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, BinaryIO

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from tlearn import __version__
from tlearn.data.images import ImageDecodeError, ImageTooLargeError, declared_size
from tlearn.data.preprocess import EvalPreprocess, Preprocessing
from tlearn.deploy.admission import Admission, Busy
from tlearn.deploy.batching import BatchError, MicroBatcher
from tlearn.deploy.guards import BodyLimit, HostCheck, OriginCheck, RequestLimit
from tlearn.deploy.model_info import describe_model, model_identity, without_directories
from tlearn.deploy.pixels import PixelBudget, PixelGate
from tlearn.engines.base import InferenceEngine
from tlearn.engines.options import PredictOptions
from tlearn.errors import ModelOutputError

logger = logging.getLogger("tlearn.serve")
UPLOAD_HEAD_BYTES = 256 * 1024  # read for an upload's declared size: image headers (and EXIF before a JPEG's) fit

# Uploads get a lower limit than training data (PIL's 89.5 MP): a 40 MP RGB picture is 120 MB decoded.
DEFAULT_UPLOAD_PIXELS = 40_000_000
MAX_DECODE_THREADS = 4


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeSettings:
    """Limits, timeouts and batching of the service (each bounds memory or time; see the module docstring).

    Attributes:
        max_request_bytes: larger request bodies are refused with 413 before they are read.
        max_files: images per request.
        max_image_pixels: larger images (or images whose resized copy would be larger) get 413 before decoding.
        max_batch_size: images per model call, all concurrent requests together; larger requests are split.
        batch_wait_ms: how long a request waits for others to share its model call.
        max_pending_requests: requests being decoded or waiting for the model; more get 503 + Retry-After.
        max_pending_per_client: of those, the most one client address may hold (`tlearn.deploy.admission`);
            default three quarters of `max_pending_requests`, so at least a quarter stays for the others.
        decode_threads: images decoded at once (default: one per core, at most `MAX_DECODE_THREADS`: each can
            hold a 40 MP picture, so a bigger host must not multiply the peak memory).
        max_request_pixels: pixels all images of one request may declare in their headers; more get 413.
        retry_after_s: the Retry-After of a 503.
        limit_concurrency: requests served at once (`/healthz` always is); more get 503 + Retry-After.
        max_connections_per_client: open connections per client address; more get 503 + Retry-After.
        max_connections: open connections in all; more get 503 + Retry-After.
        timeout_keep_alive_s: an idle keep-alive connection is closed after this.
        header_timeout_s: a connection that has not sent complete request headers by then is closed.
        body_timeout_s: a request body not received in full by then is refused with 408.
        allowed_hosts: `Host` names served besides the loopback ones (`*`: any; `run_server` adds the bound host).
        allowed_origins: web origins (`https://app.example:3000`) whose pages may POST to the service (`*`: any);
            other sites' pages get 403 (`OriginCheck`).
        docs: serve `/docs` and `/openapi.json` (the page loads scripts from a CDN).
        max_consecutive_failures: failed model calls in a row after which `/readyz` answers 503.

    Example:
        >>> tlearn.serve("ants.onnx", settings=ServeSettings(max_batch_size=16))  # doctest: +SKIP
    """

    max_request_bytes: int = 10 * 1024 * 1024
    max_files: int = 64
    max_image_pixels: int = DEFAULT_UPLOAD_PIXELS
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_pending_requests: int = 32
    max_pending_per_client: int | None = None
    decode_threads: int | None = None
    max_request_pixels: int = 100_000_000
    retry_after_s: int = 1
    limit_concurrency: int = 64
    max_connections_per_client: int = 64
    max_connections: int = 512
    timeout_keep_alive_s: int = 5
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    docs: bool = False
    max_consecutive_failures: int = 3


class _Service:
    """What the routes share: the engine once loaded, its batcher, the decoders, and why loading failed."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.engine: InferenceEngine | None = None
        self.batcher: MicroBatcher | None = None
        self.identity: dict[str, str] = {}
        self.failure: str | None = None
        self.admission = Admission.sharing(settings.max_pending_requests, settings.max_pending_per_client)
        threads = settings.decode_threads or min(_cores(), MAX_DECODE_THREADS)
        self.decode_slots = asyncio.Semaphore(threads)
        self.decoder = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tlearn-decode")
        self.pixel_gate = PixelGate(settings.max_image_pixels)  # about one largest picture decoded at a time
        self._probing: asyncio.Task[str | None] | None = None

    async def load(self, loader: Callable[[], InferenceEngine]) -> None:
        """Load the model off the event loop, run one warm-up batch, then start batching."""
        settings = self.settings
        try:
            engine = await asyncio.to_thread(loader)
            height, width = engine.preprocessing.input_size
            warm_up = np.zeros((1, height, width, 3), dtype=np.uint8)
            infer = model_call(engine)
            await asyncio.to_thread(infer, warm_up)
        except Exception as error:  # any failure is reported by /readyz and logged; liveness stays up
            self.failure = without_directories(f"{type(error).__name__}: {error}")
            logger.error("model failed to load: %s", self.failure)
            return
        self.identity = model_identity(engine)
        self.batcher = MicroBatcher(
            infer,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.batch_wait_ms / 1000,
            probe=warm_up,
            max_consecutive_failures=settings.max_consecutive_failures,
        )
        await self.batcher.start()
        self.engine = engine
        logger.info("model %s (%s engine) ready", self.identity["name"], engine.engine)

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.decoder.shutdown(wait=False, cancel_futures=True)

    def ready_engine(self) -> tuple[InferenceEngine, MicroBatcher]:
        if self.engine is None or self.batcher is None:
            raise HTTPException(503, self.failure or "the model is still loading; retry when /readyz answers 200")
        return self.engine, self.batcher

    def unready_reason(self) -> str | None:
        """Why predictions cannot be made now (None: they can)."""
        if self.engine is None or self.batcher is None:
            return self.failure or "the model is still loading"
        return self.batcher.failure

    async def recheck(self) -> str | None:
        """Probe a model that stopped answering (one probe at a time), so readiness can come back."""
        if self.batcher is None or self.batcher.failure is None:
            return self.unready_reason()
        if self._probing is None or self._probing.done():
            self._probing = asyncio.create_task(self.batcher.probe())
        return await asyncio.shield(self._probing)

    @contextlib.contextmanager
    def admitted(self, request: Request) -> Iterator[None]:
        """Hold a pending-request slot for the request's client; 503 + Retry-After when none is left to it."""
        client = _client(request)
        try:
            self.admission.take(client)
        except Busy as busy:
            raise HTTPException(503, str(busy), headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        try:
            yield
        finally:
            self.admission.release(client)


@dataclass(frozen=True)
class _Refusal:
    """Why one uploaded file cannot be used, and the HTTP status that says so."""

    file: str
    reason: str
    status: int  # 413 too large, 415 not a usable image, 503 out of memory (retry)


def create_app(loader: Callable[[], InferenceEngine], settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The FastAPI application serving the engine that `loader` returns (called in the background at startup).

    Example:
        >>> from fastapi.testclient import TestClient
        >>> app = create_app(lambda: load_engine("model.onnx"))  # doctest: +SKIP
        >>> with TestClient(app, base_url="http://localhost") as client:  # doctest: +SKIP
        ...     client.post("/v1/predict", files=[("files", open("bee.jpg", "rb"))]).json()
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = app.state.service = _Service(settings)  # made here: its semaphore belongs to the server's loop
        loading = asyncio.create_task(service.load(loader))
        yield
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await service.close()

    def current() -> _Service:
        return app.state.service

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="tlearn", version=__version__, lifespan=lifespan, **docs)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestLimit, max_requests=settings.limit_concurrency, retry_after_s=settings.retry_after_s)
    app.add_middleware(OriginCheck, allowed=settings.allowed_origins)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts)

    @app.exception_handler(MemoryError)
    async def out_of_memory(_: Request, error: MemoryError) -> JSONResponse:
        """Memory ran out serving this request: the next one may well fit, so the client is asked to retry."""
        logger.error("out of memory while serving a request")
        headers = {"Retry-After": str(settings.retry_after_s)}
        return JSONResponse({"detail": "out of memory; retry shortly"}, status_code=503, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the model is loaded and answers; 503 before, if loading failed, or if the model
        stopped answering (probed again on each call until it answers)."""
        reason = await current().recheck()
        if reason is None:
            return JSONResponse({"status": "ready", "model": current().identity})
        status = "loading" if current().engine is None and current().failure is None else "failed"
        return JSONResponse({"status": status, "error": reason}, status_code=503)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        """Classes, backbone, input size, how it answers (task, thresholds, reject rule) and its run's metrics."""
        engine, _ = current().ready_engine()
        return describe_model(engine, current().identity)

    @app.post("/v1/predict")
    async def predict(
        request: Request,
        files: list[UploadFile] = File(..., description="Images, repeat the field for several."),  # noqa: B008 - FastAPI's idiom
        top_k: int = Query(3, ge=1, description="Labels per image."),
        reject: bool = Query(True, description="false: the best class even where the reject rule says unknown."),
    ) -> dict[str, Any]:
        """Top-k labels and probabilities for each uploaded image, with its label set or "unknown" answer."""
        started = time.perf_counter()
        service = current()
        engine, batcher = service.ready_engine()
        if len(files) > settings.max_files:
            raise HTTPException(413, f"too many files ({len(files)} > {settings.max_files} per request)")
        with service.admitted(request):
            names = [file_name(upload.filename, index) for index, upload in enumerate(files)]
            with batcher.expecting():  # a batch being formed waits for these images
                streams = [upload.file for upload in files]
                pixels = await _decode_all(service, engine.preprocessing, names, streams, _client(request))
            decoded = time.perf_counter()
            try:
                probabilities, timing = await batcher.submit(pixels)
            except BatchError as error:
                raise HTTPException(failure_status(error, batcher), without_directories(str(error))) from None
        options = PredictOptions(top_k=top_k, reject=reject)
        predictions = [answer_of(engine, name, row, options) for name, row in zip(names, probabilities, strict=True)]
        return {
            "model": {**service.identity, "engine": engine.engine},
            "predictions": predictions,
            "timing": {
                "decode_ms": round(1000 * (decoded - started), 2),
                "queue_ms": round(timing.queue_ms, 2),
                "inference_ms": round(timing.inference_ms, 2),
                "batch_images": timing.batch_images,
                "batch_requests": timing.batch_requests,
                "model_calls": timing.model_calls,
                "total_ms": round(1000 * (time.perf_counter() - started), 2),
            },
        }

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        """The web page: drop or pick images, see the top labels as bars next to their thumbnails."""
        return (resources.files("tlearn.deploy") / "web" / "index.html").read_text(encoding="utf-8")

    return app


def model_call(engine: InferenceEngine) -> Callable[[np.ndarray], np.ndarray]:
    """What the micro-batcher runs on (B, H, W, 3) pixels: the probabilities (B, C), and for a model with a
    reject rule its reject scores as one more column (B, C + 1).

    The "knn" score needs the embeddings, which only the model call sees, and scoring there keeps the kNN
    search off the event loop; one matrix keeps the batcher splitting answers by rows.
    """
    if engine.config.reject is None:
        return engine.probabilities

    def scored(pixels: np.ndarray) -> np.ndarray:
        probabilities, scores = engine.scored_probabilities(pixels)
        return np.column_stack([probabilities, scores])

    return scored


def failure_status(error: BatchError, batcher: MicroBatcher) -> int:
    """The status of a request whose batch failed: 500 for a model that raised, but for outputs that are not
    probabilities (`ModelOutputError`) 422 while the model still answers its probe (these images make it give
    NaN), 503 when it does not (it cannot answer; `/readyz` says so)."""
    if isinstance(error.cause, ModelOutputError):
        return 503 if batcher.failure is not None else 422
    return 500


def answer_of(engine: InferenceEngine, name: str, row: np.ndarray, options: PredictOptions) -> dict[str, Any]:
    """One image's answer from its row of `model_call`'s matrix: file, labels and probabilities, and a
    multi-label or reject model's answer (`Prediction.to_dict` without its source and error)."""
    probabilities, score = (row[:-1], float(row[-1])) if engine.config.reject is not None else (row, None)
    answer = engine.answer(name, probabilities, options, score).to_dict()
    return {"file": name, **{key: value for key, value in answer.items() if key not in ("source", "error")}}


def _client(request: Request) -> str:
    """The peer address a request came from (what the per-client limits count by)."""
    return request.client.host if request.client else "unknown"


def file_name(given: str | None, index: int) -> str:
    """The name an upload is answered under: its base name only (clients may send a whole path)."""
    name = re.split(r"[/\\]", given or "")[-1]
    return name or f"file {index + 1}"


async def _decode_all(
    service: _Service, preprocessing: Preprocessing, names: list[str], streams: list[BinaryIO], client: str
) -> np.ndarray:
    """(n, H, W, 3) uint8 pixels of the uploads, at most `decode_threads` images decoded at once (a big picture
    waits for the pixel gate and for `client`'s earlier big pictures).

    Raises:
        HTTPException: any unusable file fails the request, naming every bad file and its reason: 503 (with
            Retry-After) if memory ran out, else 413 if one was too large, else 415.
    """
    loop = asyncio.get_running_loop()
    max_pixels = service.settings.max_image_pixels
    budget = PixelBudget(service.settings.max_request_pixels)

    async def decode(name: str, stream: BinaryIO) -> np.ndarray | _Refusal:
        # A big picture waits for the gate here, on the event loop, not in a decoding thread: small ones keep
        # the threads meanwhile. One declaring more than the upload limit is refused before any pixel is
        # decoded, so it passes without waiting.
        size = declared_size(upload_head(stream))
        decoded = size if size is not None and size[0] * size[1] <= max_pixels else None
        async with service.pixel_gate.admitted(decoded, client), service.decode_slots:
            return await loop.run_in_executor(
                service.decoder, decode_upload, name, stream, preprocessing, max_pixels, budget
            )

    results = await asyncio.gather(*(decode(name, stream) for name, stream in zip(names, streams, strict=True)))
    refused = [result for result in results if isinstance(result, _Refusal)]
    if refused:
        status = 503 if any(r.status == 503 for r in refused) else 413 if any(r.status == 413 for r in refused) else 415
        summary = "; ".join(f"{item.file}: {item.reason}" for item in refused)
        detail = {
            "message": f"unusable image(s): {summary}",
            "files": [{"file": item.file, "reason": item.reason, "status": item.status} for item in refused],
        }
        headers = {"Retry-After": str(service.settings.retry_after_s)} if status == 503 else None
        raise HTTPException(status, detail, headers=headers)
    return np.stack(results)


def upload_head(stream: BinaryIO, size: int = UPLOAD_HEAD_BYTES) -> bytes:
    """The first bytes of an upload (its header, for `declared_size`), the stream left at its start."""
    stream.seek(0)
    head = stream.read(size)
    stream.seek(0)
    return head


def decode_upload(
    name: str, stream: BinaryIO, preprocessing: Preprocessing, max_pixels: int, budget: PixelBudget | None = None
) -> np.ndarray | _Refusal:
    """One upload's preprocessed (H, W, 3) uint8 pixels, or why it is refused; runs in a decoding thread.

    The bytes are read here, inside the decoding slot, so only `decode_threads` uploads are in memory at once
    (the others wait in the multipart parser's spool files).
    """
    try:
        stream.seek(0)
        content = stream.read()
        over = budget.take(declared_size(content)) if budget is not None else None
        if over is not None:
            return _Refusal(name, over, 413)
        # Decoded exactly as training and `tlearn predict` decode; the aspect ratio and the resized size are
        # checked before the resize allocates anything.
        return EvalPreprocess(preprocessing, max_pixels=max_pixels).from_file(content)
    except ImageTooLargeError as error:
        return _Refusal(name, str(error), 413)
    except ImageDecodeError as error:  # a transient one (memory ran out) says nothing about the file: retry
        return _Refusal(name, str(error), 503 if getattr(error, "transient", False) else 415)
    except MemoryError:
        return _Refusal(name, "not enough memory to decode it now; retry shortly", 503)
    except Exception as error:  # a decoder bug must not fail the request's other files silently or crash: 415
        logger.exception("unexpected error decoding %s", name)
        return _Refusal(name, f"cannot be decoded ({type(error).__name__})", 415)
