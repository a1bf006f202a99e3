"""`llm2search dev`: tools for developers (tiny models in the real LLM2CLIP layout)."""

from __future__ import annotations

from pathlib import Path

import typer

dev_app = typer.Typer(no_args_is_help=True, help="Tools for developers: tiny models and test data.")


@dev_app.command("make-tiny-model")
def make_tiny_model(
    out: Path = typer.Argument(..., help="Directory to create."),
    seed: int = typer.Option(0, "--seed"),
    dim: int = typer.Option(32, "--dim", help="Shared embedding size."),
    image_size: int = typer.Option(64, "--image-size"),
) -> None:
    """Write a random tiny model in the real LLM2CLIP layout (usable as --model DIR)."""
    from ..models.tiny import TinyModelConfig, build_tiny_model

    path = build_tiny_model(out, TinyModelConfig(seed=seed, dim=dim, image_size=image_size))
    typer.echo(str(path))

