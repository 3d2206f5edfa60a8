"""`tlearn push`: a trained model and its model card to the Hugging Face Hub, or to a local folder to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlearn.cli.app import app


@app.command()
def push(
    run: Annotated[Path, typer.Argument(help="Run directory (or model directory) to share.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repository, OWNER/NAME; load it back as hf-hub:OWNER/NAME.")],
    local: Annotated[
        Path | None,
        typer.Option("--local", help="Write what would be uploaded to this folder instead of uploading."),
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the --local folder (only one `push --local` wrote).")
    ] = False,
) -> None:
    """Share a model: weights, config and a model card (classes, figures with 95% intervals, how to load)."""
    from tlearn.api import push as push_model

    if local is not None:
        staged = push_model(run, repo_id, local=local, overwrite=overwrite)
        print(f"staged: {staged} (what `tlearn push {run} {repo_id}` uploads; load it with `tlearn.load({staged!r})`)")
        return
    url = push_model(run, repo_id, private=private)
    print(f'pushed: {url} (load it with tlearn.load("hf-hub:{repo_id}") or `tlearn predict hf-hub:{repo_id} IMAGES`)')
