"""`tlearn predict`: labels for files and folders, printed as they come (table, JSON or CSV).

File and class names are printed with control characters escaped (`tlearn.util.text.printable`), so a name
holding ANSI escapes or right-to-left overrides cannot rewrite the terminal, and a name that is not UTF-8
prints instead of failing; JSON escapes them itself, and CSV cells are also neutralised against formulas.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tlearn.cli.app import DeviceOption, EngineOption, ModelArgument, QuietOption, WorkersOption, app
from tlearn.util.atomic import neutralise_cell
from tlearn.util.text import printable


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command()
def predict(
    model: ModelArgument,
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")] = 3,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="table, json or csv.")] = OutputFormat.table,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Predict labels for images, printed as they come; exit code 1 if any file could not be read."""
    from tlearn.api import predict as predict_files

    predictions = predict_files(
        model,
        paths,
        top_k=top_k,
        device=device,
        engine=engine.value if engine else None,
        workers=workers,
        quiet=quiet,
    )
    failed, total = print_predictions(predictions, output_format)
    if failed:
        print(f"{failed} of {total} file(s) could not be read", file=sys.stderr)
        raise typer.Exit(1)


def print_predictions(predictions: Iterable, output_format: OutputFormat) -> tuple[int, int]:
    """Print each prediction as soon as it is made (constant memory); returns (failed, total)."""
    failed = total = 0
    writer = csv.writer(sys.stdout, lineterminator="\n")

    def csv_row(*cells: object) -> None:
        writer.writerow([neutralise_cell(printable(cell)) if isinstance(cell, str) else cell for cell in cells])

    if output_format is OutputFormat.csv:
        csv_row("source", "rank", "label", "probability", "error")
    elif output_format is OutputFormat.json:
        sys.stdout.write("[")
    for prediction in predictions:
        source = printable(prediction.source)
        if output_format is OutputFormat.json:  # ensure_ascii: every control character and odd byte is escaped
            sys.stdout.write(("," if total else "") + "\n  " + json.dumps(prediction.to_dict(), ensure_ascii=True))
        elif output_format is OutputFormat.csv:
            if prediction.error:
                csv_row(prediction.source, "", "", "", prediction.error)
            for rank, (label, probability) in enumerate(
                zip(prediction.labels, prediction.probabilities, strict=True), start=1
            ):
                csv_row(prediction.source, rank, label, f"{probability:.6f}", "")
        elif prediction.error:
            print(f"{source}\tERROR: {printable(prediction.error)}")
        else:
            answers = "  ".join(
                f"{printable(label)} {probability:.3f}"
                for label, probability in zip(prediction.labels, prediction.probabilities, strict=True)
            )
            print(f"{source}\t{answers}")
        failed, total = failed + bool(prediction.error), total + 1
    if output_format is OutputFormat.json:
        print("\n]" if total else "]")
    return failed, total
