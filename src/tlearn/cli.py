"""The `tlearn` command line: parse options, call one library function, print the outcome.

Errors a user can fix are `TlearnError`s: one line on stderr, exit code 2, no traceback (`--debug` shows it).
"""

from __future__ import annotations

import csv
import gc
import json
import os
import sys
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tlearn import __version__
from tlearn.errors import TlearnError

app = typer.Typer(
    name="tlearn",
    help="Transfer learning for image classification: train, evaluate, predict from a folder of labelled images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cache_app = typer.Typer(help="Inspect or clear the embedding cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


class Mode(str, Enum):
    linear = "linear"
    finetune = "finetune"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Engine(str, Enum):
    torch = "torch"
    onnx = "onnx"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


# Options shared by several commands, declared once.
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or status lines.")]
WorkersOption = Annotated[int | None, typer.Option("--workers", min=0, help="Image decoding processes.")]
ModelOption = Annotated[Path, typer.Argument(help="Model directory (or run directory holding model/) or .onnx file.")]
EngineOption = Annotated[Engine | None, typer.Option("--engine", help="torch or onnx (default: by file type).")]


def _version(value: bool) -> None:
    if value:
        print(f"tlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
) -> None:
    """Global options (handled in `main`)."""


@app.command()
def train(
    data: Annotated[Path | None, typer.Argument(help="DATA/<class>/* or DATA/{train,val[,test]}/<class>/*.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<data>-<mode>-<time>).")
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="linear: frozen backbone + cached embeddings; finetune: then unfreeze.")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Embedded backbone or any timm model name (see `tlearn backbones`).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local backbone weights (.safetensors or state dict).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Fine-tuning epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    split: Annotated[
        str | None, typer.Option(help="train,val,test fractions for DATA/<class>/* (default 60,20,20).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak fine-tuning learning rate (top layers).")] = None,
    layer_decay: Annotated[
        float | None, typer.Option(help="Learning-rate factor from one layer group to the next lower one.")
    ] = None,
    unfreeze_every: Annotated[int | None, typer.Option(min=1, help="Epochs between unfreezing layer groups.")] = None,
    unfreeze_depth: Annotated[
        int | None, typer.Option(min=1, help="Layer groups (from the top) fine-tuning may unfreeze.")
    ] = None,
    patience: Annotated[int | None, typer.Option(min=1, help="Early stopping: epochs without val improvement.")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing for fine-tuning.")] = None,
    balance: Annotated[
        str | None, typer.Option(help="Class-weighted loss: auto (when imbalance > 3:1), on, off.")
    ] = None,
    augment: Annotated[str | None, typer.Option(help="Fine-tuning augmentation: trivial, basic, none.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    precision: Annotated[str | None, typer.Option(help="Fine-tuning precision: auto, fp32, bf16, fp16.")] = None,
    compile_model: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile for fine-tuning.")
    ] = None,
    calibrate: Annotated[
        bool | None,
        typer.Option(
            "--calibrate/--no-calibrate", help="Fit a temperature on val so probabilities mean what they say."
        ),
    ] = None,
    workers: WorkersOption = None,
    nproc: Annotated[int, typer.Option(min=1, help="Processes (e.g. GPUs) to train with; launches torchrun.")] = 1,
    mlflow: Annotated[str | None, typer.Option(help="Also log to this MLflow tracking URI (server or folder).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML/JSON settings; flags override them.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous run's outputs in --out.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out (same settings).")] = False,
    quiet: QuietOption = False,
) -> None:
    """Train a classifier on a folder of labelled images, evaluate it, and save it under --out."""
    if nproc > 1:
        _relaunch_with_torchrun(nproc)
    from tlearn.api import train as train_run
    from tlearn.config import parse_split

    run = train_run(
        data,
        out=out,
        config=config,
        overwrite=overwrite,
        resume=resume,
        quiet=quiet,
        mode=mode.value if mode else None,
        backbone=backbone,
        weights=weights,
        epochs=epochs,
        seed=seed,
        split=parse_split(split) if split else None,
        batch_size=batch_size,
        lr=lr,
        layer_decay=layer_decay,
        unfreeze_every=unfreeze_every,
        unfreeze_depth=unfreeze_depth,
        patience=patience,
        label_smoothing=label_smoothing,
        balance=balance,
        augment=augment,
        device=device,
        precision=precision,
        compile=compile_model,
        workers=workers,
        mlflow=mlflow,
        calibrate=calibrate,
    )
    if run.rank != 0:  # under torchrun, rank 0 reports
        return
    for split_name, values in run.metrics.items():
        print(
            f"{split_name}: accuracy {values['accuracy']:.4f}  balanced {values['balanced_accuracy']:.4f}  "
            f"macro F1 {values['macro_f1']:.4f}  (n={values['n']})"
        )
    print(f"model: {run.model_path}")
    print(f"metrics: {run.path / 'metrics.json'}  ({run.summary['seconds']:.1f} s)")
    print(f"report: {run.path / 'report.html'}")


def _relaunch_with_torchrun(nproc: int) -> None:
    """`tlearn train --nproc N ...` is `torchrun --standalone --nproc_per_node N -m tlearn train ...`."""
    import subprocess

    from tlearn.distributed import torchrun_command

    args = sys.argv[1:]
    for position, arg in enumerate(args):
        if arg == "--nproc":
            del args[position : position + 2]
            break
        if arg.startswith("--nproc="):
            del args[position]
            break
    raise typer.Exit(subprocess.run(torchrun_command(nproc, args)).returncode)


@app.command()
def evaluate(
    model: ModelOption,
    data: Annotated[Path, typer.Argument(help="Labelled folder; its test (or val) split when pre-split.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write metrics.json and predictions.csv here.")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="all, train, val or test (default: test/val when pre-split, else all).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Flip test-time augmentation: average each image with its mirror image.")
    ] = False,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Measure a saved model on a labelled folder (with --out: metrics, predictions and report.html)."""
    from tlearn.evaluation import evaluate_folder
    from tlearn.inference import load_engine
    from tlearn.progress import Progress

    classifier = load_engine(model, engine=engine.value if engine else None, device=device)
    evaluation = evaluate_folder(
        classifier, data, split=split, out=out, workers=workers, tta=tta, progress=Progress(quiet=quiet)
    )
    values = evaluation.metrics[evaluation.split]
    print(
        f"{evaluation.split}: accuracy {values['accuracy']:.4f}  balanced {values['balanced_accuracy']:.4f}  "
        f"macro F1 {values['macro_f1']:.4f}  (n={values['n']})"
    )
    if evaluation.skipped:
        print(
            f"skipped {len(evaluation.skipped)} unreadable file(s), e.g. {evaluation.skipped[0]['path']}: "
            f"{evaluation.skipped[0]['reason']}",
            file=sys.stderr,
        )
    if out is not None:
        print(f"metrics: {out / 'metrics.json'}")
        print(f"report: {out / 'report.html'}")


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders (tlearn train --out) or evaluations (tlearn evaluate --out).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the table to a .md or .html file.")
    ] = None,
) -> None:
    """Compare runs side by side: backbone, mode, epochs, time, accuracy, macro F1, ECE, model size."""
    from tlearn.compare import markdown_table, summarize_run, write_comparison

    summaries = [summarize_run(run) for run in runs]
    print(markdown_table(summaries))
    if out is not None:
        print(f"written: {write_comparison(summaries, out)}")


@app.command()
def predict(
    model: ModelOption,
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")] = 3,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="table, json or csv.")] = OutputFormat.table,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Predict labels for images, printed as they come; exit code 1 if any file could not be read."""
    from tlearn.discovery import list_image_files
    from tlearn.errors import DataError
    from tlearn.inference import load_engine
    from tlearn.progress import Progress

    files = list_image_files(paths)
    if not files:
        raise DataError(f"no image files found in {', '.join(map(str, paths))}")
    classifier = load_engine(model, engine=engine.value if engine else None, device=device)
    predictions = classifier.iter_file_predictions(files, top_k=top_k, workers=workers, progress=Progress(quiet=quiet))
    failed, total = _print_predictions(predictions, output_format)
    if failed:
        print(f"{failed} of {total} file(s) could not be read", file=sys.stderr)
        raise typer.Exit(1)


def _print_predictions(predictions: Iterable, output_format: OutputFormat) -> tuple[int, int]:
    """Print each prediction as soon as it is made (constant memory); returns (failed, total)."""
    failed = total = 0
    writer = csv.writer(sys.stdout, lineterminator="\n")
    if output_format is OutputFormat.csv:
        writer.writerow(["source", "rank", "label", "probability", "error"])
    elif output_format is OutputFormat.json:
        sys.stdout.write("[")
    for prediction in predictions:
        if output_format is OutputFormat.json:
            sys.stdout.write(("," if total else "") + "\n  " + json.dumps(prediction.to_dict()))
        elif output_format is OutputFormat.csv:
            if prediction.error:
                writer.writerow([prediction.source, "", "", "", prediction.error])
            for rank, (label, probability) in enumerate(
                zip(prediction.labels, prediction.probabilities, strict=True), start=1
            ):
                writer.writerow([prediction.source, rank, label, f"{probability:.6f}", ""])
        elif prediction.error:
            print(f"{prediction.source}\tERROR: {prediction.error}")
        else:
            answers = "  ".join(
                f"{label} {probability:.3f}"
                for label, probability in zip(prediction.labels, prediction.probabilities, strict=True)
            )
            print(f"{prediction.source}\t{answers}")
        failed, total = failed + bool(prediction.error), total + 1
    if output_format is OutputFormat.json:
        print("\n]" if total else "]")
    return failed, total


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model directory (or run directory holding model/).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (e.g. model.onnx, model.pt).")],
    export_format: Annotated[ExportFormat, typer.Option("--format", help="onnx or torchscript.")] = ExportFormat.onnx,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Quantize (onnx): static with --calibration-data, else dynamic (MatMul/Gemm only)."
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
    """Export to ONNX (fp32/INT8) or TorchScript, verified against PyTorch; a failed check writes nothing."""
    from tlearn.export import export_model
    from tlearn.progress import Progress

    result = export_model(
        model,
        out,
        export_format=export_format.value,
        int8=int8,
        calibration_data=calibration_data,
        check_data=check_data,
        opset=opset,
        progress=Progress(quiet=quiet),
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
    model: ModelOption,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 makes it reachable from the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    max_request_mb: Annotated[float, typer.Option(min=0.001, help="Larger request bodies get 413.")] = 10.0,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Images per model call across concurrent requests.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a request waits to share a model call.")] = 5.0,
    quiet: QuietOption = False,
) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, and a web page at /."""
    from tlearn.serving import ServeSettings
    from tlearn.serving import serve as run_service

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serving on {host}: reachable from other machines, without authentication", file=sys.stderr)
    settings = ServeSettings(
        max_request_bytes=int(max_request_mb * 1024 * 1024), max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms
    )
    run_service(
        model,
        host=host,
        port=port,
        engine=engine.value if engine else None,
        device=device,
        settings=settings,
        log_level="warning" if quiet else "info",
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the drawn images and the run.")] = Path(
        "tlearn-demo"
    ),
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Draw a small labelled image set, train on it and evaluate — no data or internet needed."""
    from tlearn.demo_data import demo as run_demo

    run = run_demo(out, quiet=quiet, device=device)
    for split_name, values in run.metrics.items():
        print(f"{split_name}: accuracy {values['accuracy']:.4f}  macro F1 {values['macro_f1']:.4f}  (n={values['n']})")
    print(f"data: {out / 'data'}")
    print(f"model: {run.model_path}")
    print(f"metrics: {run.path / 'metrics.json'}")
    print(f"try: tlearn predict {run.model_path} {out / 'data' / 'circle'}")


@app.command()
def backbones() -> None:
    """List the embedded backbones and explain how to use any timm model."""
    from tlearn.backbone_registry import backbone_listing

    print(backbone_listing())


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is and what it holds."""
    from tlearn.cache import cache_root, summarize

    summary = summarize(cache_root())
    print(f"cache: {summary.root}  ({summary.total_bytes / 1e6:.1f} MB; set TLEARN_CACHE_DIR to move it)")
    for namespace, details in summary.embeddings.items():
        backbone = details["description"].get("backbone", {})
        print(
            f"  embeddings {namespace}: {details['entries']} images, {details['bytes'] / 1e6:.1f} MB "
            f"({backbone.get('arch', '?')}, {backbone.get('weights', '?')})"
        )
    print(f"  backbones: {len(summary.backbones)} stored; unreadable-file verdicts: {summary.rejects}")


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete everything in the cache (it is rebuilt on demand)."""
    from tlearn.cache import cache_root, clear

    freed = clear(cache_root())
    print(f"cleared {cache_root()} ({freed / 1e6:.1f} MB freed)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `tlearn` and `python -m tlearn`: runs the CLI and turns errors into exit codes.

    Typer handles usage errors itself (message and exit code 2); this adds one-line `TlearnError`s (exit 2)
    and one-line internal errors (exit 1), with tracebacks only under `--debug` or TLEARN_DEBUG=1.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TLEARN_DEBUG") == "1"
    try:
        typer.main.get_command(app).main(args=args, prog_name="tlearn", standalone_mode=True)
    except SystemExit:
        # The work is done and written; skip the interpreter's final garbage collection of the torch/timm
        # object graph, which otherwise adds about a second to every command's exit.
        gc.freeze()
        raise
    except TlearnError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        if debug:
            raise
        print(
            f"error: internal error ({type(error).__name__}: {error}); rerun with --debug for the traceback",
            file=sys.stderr,
        )
        sys.exit(1)
