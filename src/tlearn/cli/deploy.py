"""`tlearn export` and `tlearn serve`: a verified deployable file, and the model behind an HTTP API."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tlearn.cli.app import DeviceOption, EngineOption, ModelArgument, QuietOption, app


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    openvino = "openvino"
    coreml = "coreml"
    tflite = "tflite"


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model directory (or run directory holding model/).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="File to write: model.onnx, model.pt, model.xml (+ model.bin), model.mlpackage, model.tflite "
            "(+ model.json).",
        ),
    ],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="onnx, torchscript, openvino, coreml or tflite.")
    ] = ExportFormat.onnx,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Quantize (onnx, tflite): static with --calibration-data, else dynamic (onnx: MatMul/Gemm only; "
            "tflite: weights only).",
        ),
    ] = False,
    calibration_data: Annotated[
        Path | None,
        typer.Option("--calibration-data", help="Representative images (a folder) to calibrate static INT8 on."),
    ] = None,
    check_data: Annotated[
        Path | None,
        typer.Option("--check-data", help="Images to verify on (default: the run's validation split, if still there)."),
    ] = None,
    opset: Annotated[int, typer.Option(min=13, help="ONNX opset.")] = 18,
    quiet: QuietOption = False,
) -> None:
    """Export to ONNX (fp32/INT8), TorchScript, OpenVINO or Core ML, verified against PyTorch; a failed check
    writes nothing."""
    from tlearn.api import export as export_model

    result = export_model(
        model,
        out,
        export_format=export_format.value,
        int8=int8,
        calibration_data=calibration_data,
        check_data=check_data,
        opset=opset,
        quiet=quiet,
    )
    for check in result.checks:
        print(check.summary())
    for note in result.notes:
        print(f"note: {note}")
    print(
        f"exported: {result.path} ({result.export_format} {result.precision}, {result.size_bytes / 1e6:.1f} MB, "
        f"{result.seconds:.1f} s)"
    )


@app.command()
def serve(
    model: ModelArgument,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 makes it reachable from the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    max_request_mb: Annotated[float, typer.Option(min=0.001, help="Larger request bodies get 413.")] = 10.0,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Images per model call across concurrent requests.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits to share a model call.")] = 5.0,
    max_image_mp: Annotated[float, typer.Option(min=0.01, help="Larger images (megapixels) get 413.")] = 40.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests decoded or queued at once; more get 503.")] = 32,
    max_queue_per_client: Annotated[
        int | None,
        typer.Option(min=1, help="Of those, the most from one client address (default 3/4); more get 503."),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Host header to accept besides localhost (repeatable; *.example.com: its subdomains; *: any)."
        ),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(help="Web origin whose pages may POST here, e.g. https://app.example (repeatable; * for any)."),
    ] = None,
    docs: Annotated[bool, typer.Option("--docs", help="Serve /docs and /openapi.json (load a CDN).")] = False,
    quiet: QuietOption = False,
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, and a web page at /."""
    from tlearn.api import serve as serve_model
    from tlearn.deploy.serving import ServeSettings

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serving on {host}: reachable from other machines, without authentication", file=sys.stderr)
    settings = ServeSettings(
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms,
        max_image_pixels=int(max_image_mp * 1_000_000),
        max_pending_requests=max_queue,
        max_pending_per_client=max_queue_per_client,
        allowed_hosts=tuple(allow_host or ()),
        allowed_origins=tuple(allow_origin or ()),
        docs=docs,
    )
    serve_model(
        model,
        host=host,
        port=port,
        engine=engine.value if engine else None,
        device=device,
        settings=settings,
        log_level="warning" if quiet else "info",
    )
