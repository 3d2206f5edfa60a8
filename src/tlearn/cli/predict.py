"""`tlearn predict`: labels for files and folders, printed as they come (table, JSON or CSV).

A multi-label model's answer is its label set (joined by `|`), and a model with a reject rule answers
"unknown" with its score: the table shows the answer before the top-k labels, CSV adds `answer` and
`reject_score` columns, JSON the keys of `Prediction.to_dict`. A plain model's output keeps its columns.

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
from typing import TYPE_CHECKING, Annotated

import typer

from tlearn.cli.app import DeviceOption, EngineOption, ModelArgument, QuietOption, WorkersOption, app
from tlearn.util.atomic import neutralise_cell
from tlearn.util.text import printable

if TYPE_CHECKING:
    from tlearn.runs.model_dir import ModelConfig


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
    no_reject: Annotated[
        bool, typer.Option("--no-reject", help="Answer the best class even where the reject rule says unknown.")
    ] = False,
    engine: EngineOption = None,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help='Predict on a Ray cluster: "auto", "ray://HOST:PORT", or "local" (this machine\'s cores).',
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Predict labels for images, printed as they come; exit code 1 if any file could not be read."""
    from tlearn.api import load, predict_on_ray
    from tlearn.api import predict as predict_files

    chosen = engine.value if engine else None
    loaded = load(model, device=device, engine=chosen)
    options = {"top_k": top_k, "quiet": quiet, "reject": not no_reject}
    if ray is not None:
        predictions = predict_on_ray(model, paths, address=ray, engine=chosen, **options)
    else:
        predictions = predict_files(loaded, paths, workers=workers, **options)
    failed, total = print_predictions(predictions, output_format, loaded.config)
    if failed:
        print(f"{failed} of {total} file(s) could not be read", file=sys.stderr)
        raise typer.Exit(1)


def answer_text(prediction) -> str:
    """The model's answer for a prediction: "unknown", the label set joined by `|`, or the top class."""
    from tlearn.engines.answers import UNKNOWN  # deferred, as every import of the model side: a fast CLI start
    from tlearn.evaluation.tasks import LABEL_SET_SEPARATOR

    if prediction.unknown:
        return UNKNOWN
    if prediction.label_set is not None:
        return LABEL_SET_SEPARATOR.join(prediction.label_set)
    return prediction.label or ""


def print_predictions(predictions: Iterable, output_format: OutputFormat, config: ModelConfig) -> tuple[int, int]:
    """Print each prediction as soon as it is made (constant memory); returns (failed, total)."""
    failed = total = 0
    writer = csv.writer(sys.stdout, lineterminator="\n")
    answers = config.task_type.answers_with_sets or config.reject is not None  # more than the top-k to show

    def csv_row(prediction, *cells: object) -> None:
        if answers:  # the answer and the reject score on each of the image's rows
            score = "" if prediction.reject_score is None else round(prediction.reject_score, 6)
            cells = (*cells, answer_text(prediction), score)
        writer.writerow([neutralise_cell(printable(cell)) if isinstance(cell, str) else cell for cell in cells])

    if output_format is OutputFormat.csv:
        header = ("source", "rank", "label", "probability", "error")
        writer.writerow([*header, "answer", "reject_score"] if answers else header)
    elif output_format is OutputFormat.json:
        sys.stdout.write("[")
    for prediction in predictions:
        source = printable(prediction.source)
        if output_format is OutputFormat.json:  # ensure_ascii: every control character and odd byte is escaped
            sys.stdout.write(("," if total else "") + "\n  " + json.dumps(prediction.to_dict(), ensure_ascii=True))
        elif output_format is OutputFormat.csv:
            if prediction.error:
                csv_row(prediction, prediction.source, "", "", "", prediction.error)
            for rank, (label, probability) in enumerate(
                zip(prediction.labels, prediction.probabilities, strict=True), start=1
            ):
                csv_row(prediction, prediction.source, rank, label, f"{probability:.6f}", "")
        elif prediction.error:
            print(f"{source}\tERROR: {printable(prediction.error)}")
        else:
            top = "  ".join(
                f"{printable(label)} {probability:.3f}"
                for label, probability in zip(prediction.labels, prediction.probabilities, strict=True)
            )
            print(f"{source}\t{_answer_cell(prediction)}\t{top}" if answers else f"{source}\t{top}")
        failed, total = failed + bool(prediction.error), total + 1
    if output_format is OutputFormat.json:
        print("\n]" if total else "]")
    return failed, total


def _answer_cell(prediction) -> str:
    """The table's answer column: the answer ("(none)" for an empty label set) and the reject score."""
    score = "" if prediction.reject_score is None else f" (score {prediction.reject_score:.3f})"
    return f"{printable(answer_text(prediction)) or '(none)'}{score}"
