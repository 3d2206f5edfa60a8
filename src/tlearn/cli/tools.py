"""`tlearn demo`, `tlearn backbones` and `tlearn cache`: trying tlearn out and looking after it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tlearn.cli.app import DeviceOption, QuietOption, app

cache_app = typer.Typer(help="Inspect, clear or compact the embedding cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the drawn images and the run.")] = Path(
        "tlearn-demo"
    ),
    device: DeviceOption = "auto",
    quiet: QuietOption = False,
) -> None:
    """Draw a small labelled image set, train on it and evaluate — no data or internet needed."""
    from tlearn.api import demo as run_demo

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
    from tlearn.backbones.registry import backbone_listing

    print(backbone_listing())


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is and what it holds."""
    from tlearn.backbones.cache import cache_root, summarize

    summary = summarize(cache_root())
    print(f"cache: {summary.root}  ({summary.total_bytes / 1e6:.1f} MB; set TLEARN_CACHE_DIR to move it)")
    for namespace, details in summary.embeddings.items():
        backbone = details["description"].get("backbone", {})
        print(
            f"  embeddings {namespace}: {details['entries']} images, {details['bytes'] / 1e6:.1f} MB "
            f"({backbone.get('arch', '?')}, {backbone.get('weights', '?')})"
        )
    print(
        f"  backbones: {len(summary.backbones)} stored ({len(summary.onnx)} exported to ONNX); unreadable-file "
        f"verdicts: {summary.rejects}; files indexed: {summary.indexed_files}; results kept: {summary.results}"
    )
    if summary.legacy_entries:
        print(f"  {summary.legacy_entries} entries of an older cache layout (never read; `tlearn cache clear`)")
    _store_info()


def _store_info() -> None:
    """The parquet embedding store's namespaces, when $TLEARN_EMBEDDING_STORE points to one."""
    from tlearn.backbones.parquet_store import store_dir_from_env, summarize_store

    root = store_dir_from_env()
    if root is None:
        return
    namespaces = summarize_store(root)
    total = sum(namespace.bytes for namespace in namespaces) / 1e6
    print(f"embedding store: {root}  (parquet, {total:.1f} MB; $TLEARN_EMBEDDING_STORE; embeddings go there)")
    for namespace in namespaces:
        backbone = namespace.description.get("backbone", {})
        skipped = f"; {namespace.skipped} other file(s) skipped" if namespace.skipped else ""
        print(
            f"  embeddings {namespace.namespace}: {namespace.rows} rows in {namespace.files} files, "
            f"{namespace.bytes / 1e6:.1f} MB ({backbone.get('arch', '?')}, {backbone.get('weights', '?')}){skipped}"
        )


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete everything in the cache (it is rebuilt on demand)."""
    from tlearn.backbones.cache import cache_root, clear

    freed = clear(cache_root())
    print(f"cleared {cache_root()} ({freed / 1e6:.1f} MB freed)")


@cache_app.command("compact")
def cache_compact(
    store: Annotated[
        Path,
        typer.Option(
            "--store",
            envvar="TLEARN_EMBEDDING_STORE",
            help="The parquet embedding store (default: $TLEARN_EMBEDDING_STORE).",
        ),
    ],
) -> None:
    """Merge the small files of each namespace of a parquet embedding store into one (safe beside writers)."""
    from tlearn.backbones.parquet_store import compact

    for done in compact(store, warn=lambda message: print(f"warning: {message}")):
        if done.path is None:
            print(f"  {done.namespace}: nothing to merge")
        else:
            print(
                f"  {done.namespace}: {done.merged_files} files merged into {done.path.name} "
                f"({done.rows} embeddings, {done.bytes_before / 1e6:.1f} MB -> {done.bytes_after / 1e6:.1f} MB)"
            )
        if done.abandoned_removed:
            print(f"  {done.namespace}: {done.abandoned_removed} temporary file(s) of stopped writers removed")
