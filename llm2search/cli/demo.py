"""`llm2search demo`: try search offline with the bundled toy model, and make held-out scenes.
Heavy modules load inside the commands, so `llm2search --help` stays instant."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import Llm2SearchError

demo_app = typer.Typer(
    help="Try llm2search offline with the bundled toy model (synthetic shapes, English + Chinese).",
)

BANNER = (
    "DEMO MODEL: {model}, a toy (~0.6M parameters) trained only on synthetic scenes of one to three\n"
    "red/green/blue/yellow/black/white circles, squares and triangles, in English and Chinese.\n"
    "It shows the whole pipeline working offline; it knows nothing about real photos\n"
    "(for those, index with the default LLM2CLIP model)."
)


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    home: Optional[Path] = typer.Option(None, "--dir", help="Where scenes and index go (default: $LLM2SEARCH_HOME/demo)."),
    per_class: int = typer.Option(3, "--per-class", min=1, help="Scenes of each of the 54 classes."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the scenes."),
    k: int = typer.Option(3, "-k", "--top-k", min=1, help="Results shown per query."),
    device: str = typer.Option("cpu", "--device", help="cpu, auto, cuda, ..."),
) -> None:
    """Generate a folder of scenes, index it with the bundled model, run English and Chinese queries."""
    if ctx.invoked_subcommand is not None:
        return
    from ..demo.tour import run_tour
    from ..paths import data_home

    home = home if home is not None else data_home() / "demo"
    try:
        result = run_tour(home, per_class=per_class, seed=seed, k=k, device=device)
    except Llm2SearchError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(BANNER.format(model=result.model))
    made = f"{result.generated} generated" if result.generated else "reused"
    typer.echo(f"\nscenes: {result.scenes_dir} ({made}; labels in labels.csv)")
    typer.echo(f"index:  {result.index_dir} ({result.indexed} photos, {result.index_seconds:.1f}s)")
    for q in result.queries:
        typer.echo(f'\nquery "{q.text}"  (wants: {q.wanted.en} / {q.wanted.zh})')
        for rank, (score, name, ok) in enumerate(q.hits, start=1):
            typer.echo(f"{rank:>3}  {score:.4f}  {name}  {'right' if ok else 'WRONG'}")
    typer.echo(f"\n{result.correct} of {result.shown} results show what was asked for.")
    typer.echo(f'Try your own: llm2search query "三个黄色的三角形" --index {result.index_dir}')


@demo_app.command("scenes")
def scenes(
    out: Path = typer.Argument(..., help="Folder to write the scenes and labels.csv into."),
    per_class: int = typer.Option(10, "--per-class", min=1, help="Scenes of each of the 54 classes."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same scenes."),
    size: int = typer.Option(64, "--size", min=16, help="Width and height in pixels."),
) -> None:
    """Write synthetic scenes (PNG) plus labels.csv (file, count, colour, shape, captions)."""
    from ..demo.scenes import CLASSES, write_scenes

    labels = write_scenes(out, per_class, seed, size)
    typer.echo(f"{per_class * len(CLASSES)} scenes in {out}; labels in {labels}")
