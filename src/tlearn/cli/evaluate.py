"""`tlearn evaluate` and `tlearn compare`: measuring saved models and setting runs side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tlearn.cli.app import DeviceOption, EngineOption, ModelArgument, QuietOption, WorkersOption, app
from tlearn.evaluation.tasks import headline

if TYPE_CHECKING:
    from tlearn.report.compare import RunSummary


@app.command()
def evaluate(
    model: ModelArgument,
    data: Annotated[Path, typer.Argument(help="Labelled folder or label file; its test (or val) split if any.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write metrics, predictions and report.html here.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an earlier evaluation in --out (kept until this one completes)."),
    ] = False,
    split: Annotated[
        str | None, typer.Option(help="all, train, val or test (default: test/val when pre-split, else all).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Flip test-time augmentation: average each image with its mirror image.")
    ] = False,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links", help="Read images outside DATA: links out of it, label-file rows naming files elsewhere."
        ),
    ] = False,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Measure a saved model on a labelled folder (with --out: metrics, predictions and report.html)."""
    from tlearn.api import evaluate as evaluate_model
    from tlearn.api import load

    loaded = load(model, engine=engine.value if engine else None, device=device)
    evaluation = evaluate_model(
        loaded,
        data,
        out=out,
        overwrite=overwrite,
        quiet=quiet,
        split=split,
        tta=tta,
        workers=workers,
        follow_links=follow_links,
    )
    values = evaluation.metrics[evaluation.split]
    print(f"{evaluation.split}: {headline(values)}")
    if evaluation.skipped:
        first = evaluation.skipped[0]
        print(
            f"skipped {len(evaluation.skipped)} unreadable file(s), e.g. {first['path']}: {first['reason']}",
            file=sys.stderr,
        )
    if out is not None:
        from tlearn.runs.layout import RunFolder

        print(f"metrics: {RunFolder(out).metrics}")
        print(f"report: {RunFolder(out).report}")


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders (tlearn train --out) or evaluations (tlearn evaluate --out).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the table to a .md or .html file.")
    ] = None,
    speed: Annotated[
        bool,
        typer.Option(
            "--speed", help="Also time each model on onnxruntime here: images/s in batches of 32, one image's latency."
        ),
    ] = False,
) -> None:
    """Compare runs side by side: backbone, mode, epochs, time, accuracy, macro F1, ECE, model size (and speed)."""
    from tlearn.report.compare import comparison_notes, markdown_table, summarize_run, write_comparison

    summaries = [summarize_run(run) for run in runs]
    if speed:
        summaries = [_timed(summary) for summary in summaries]
    print(markdown_table(summaries))
    for note in comparison_notes(summaries):
        print(f"note: {note}")
    if out is not None:
        print(f"written: {write_comparison(summaries, out)}")


def _timed(summary: RunSummary) -> RunSummary:
    """The row with its model's speed on this machine (`tlearn.deploy.speed`), said on stderr as it goes."""
    import dataclasses

    from tlearn.deploy.speed import BATCH_SIZE, measure_speed

    if summary.model_path is None:
        return summary
    print(f"timing {summary.model_path} on onnxruntime (batches of {BATCH_SIZE}, then one image) ...", file=sys.stderr)
    measured = measure_speed(summary.model_path)
    return dataclasses.replace(summary, images_per_second=measured.images_per_second, latency_ms=measured.latency_ms)
