"""`tlearn audit` and `tlearn select`: knowing the data and the backbone before training."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tlearn.cli.app import DeviceOption, QuietOption, app

DataArgument = Annotated[Path, typer.Argument(help="DATA/<class>/*, DATA/{train,val}/<class>/* or a label file.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace a previous result in --out.")]


@app.command()
def audit(
    data: DataArgument,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for audit.json, audit.html, review.csv (default runs/<data>-audit-<time>)."
        ),
    ] = None,
    backbone: Annotated[str, typer.Option(help="Backbone whose embeddings are audited.")] = "tf_efficientnet_lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for --backbone.")] = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Find likely label errors, near-duplicates, outliers and hard-to-separate classes; write a review list."""
    from tlearn.api import audit as audit_data

    found = audit_data(
        data, out=out, backbone=backbone, weights=weights, overwrite=overwrite, device=device, quiet=quiet
    )
    for line in found.lines():
        print(line)
    print(f"next: edit {found.review_csv}, then tlearn train {data} --review {found.review_csv}")


@app.command()
def select(
    data: DataArgument,
    backbones: Annotated[str, typer.Option(help="Candidates, comma-separated, tried in order.")] = "lite0,lite1,lite2",
    weights: Annotated[
        list[str] | None,
        typer.Option("--weights", help="NAME=PATH: a local weights file for one candidate (repeatable)."),
    ] = None,
    budget: Annotated[str | None, typer.Option(help="Start no new candidate after this long: 90s, 10m, 1h.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write select.json and select.html here.")
    ] = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Rank backbones by cross-validated linear-probe accuracy (with LogME and k-NN) on the train/val images."""
    from tlearn.api import select as select_backbones

    by_name = {}
    for item in weights or []:
        name, separator, path = item.partition("=")
        if not separator or not name.strip() or not path.strip():
            raise typer.BadParameter(
                f"{item!r}: expected NAME=PATH, e.g. resnet50=resnet50.safetensors", param_hint="--weights"
            )
        by_name[name.strip()] = Path(path.strip())
    selection = select_backbones(
        data,
        backbones=backbones,
        weights=by_name,
        budget=budget,
        out=out,
        overwrite=overwrite,
        device=device,
        quiet=quiet,
    )
    print(selection.table())
    unavailable = [row for row in selection.candidates if row["status"] == "unavailable"]
    if unavailable:
        print(
            f"{len(unavailable)} candidate(s) unavailable; for hub models without internet, pass local weights with "
            "--weights NAME=PATH",
            file=sys.stderr,
        )
    winner = selection.winner
    print(
        f"best: {winner['name']} (accuracy {winner['accuracy']:.3f}); train with: tlearn train {data} --backbone best"
    )
    if selection.path is not None:
        print(f"written: {selection.select_json}, {selection.page}")
