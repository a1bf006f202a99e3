"""`llm2search eval`: Recall@1/5/10 of a model on an image-caption test set, exact and indexed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import Llm2SearchError


def eval_command(
    dataset: Path = typer.Argument(..., help="Evaluation set folder (see docs/eval.md for the layouts)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model preset or model directory (default: default)."),
    index_type: str = typer.Option(
        "ivfpq", "--index-type",
        help="Index side: ivfpq (the large-collection index, at any size), flat, or auto (what `index` picks).",
    ),
    fmt: str = typer.Option("auto", "--format", help="auto, folder, flickr30k-cn, coco-cn, cn-clip."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of the Flickr30K / COCO photos."),
    split: str = typer.Option("test", "--split", help="Split (or Flickr30K-CN split folder) to use."),
    coco_captions: str = typer.Option("human", "--coco-captions", help="COCO-CN: human or translated."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Text-to-image and image-to-text Recall@1/5/10, exact search beside the index."""
    from ..eval.datasets import load_dataset
    from ..eval.retrieval import INDEX_TYPES, EvalConfig, evaluate
    from ..models.embedder import Embedder
    from ..models.presets import resolve_model

    try:
        if index_type not in INDEX_TYPES:
            raise typer.BadParameter(f"use one of {', '.join(INDEX_TYPES)}", param_hint="--index-type")
        ds = load_dataset(dataset, fmt, images, split, coco_captions)
        if not quiet and not as_json:
            typer.echo(ds.summary(), err=True)
        spec = resolve_model(model)
        config = EvalConfig(index_type=index_type, batch_size=batch_size, progress=not (quiet or as_json))
        report = evaluate(ds, Embedder(spec, device), spec.identity(), spec.name, config)
    except Llm2SearchError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
        return
    typer.echo(f"{report.dataset}: {report.images:,} images, {report.captions:,} captions; model {report.model}")
    if report.skipped_images:
        typer.echo(f"{report.skipped_images} images could not be decoded and were left out", err=True)
    typer.echo(report.table())
    typer.echo("quantisation loss, exact - index, R@10 points: " + ", ".join(
        f"{d} {100 * report.loss(d):.1f}" for d in report.recall))
