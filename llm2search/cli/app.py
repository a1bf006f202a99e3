"""The `llm2search` command: one typer app assembled from one module per command group. Heavy
modules (torch, transformers, faiss) load inside commands, so `llm2search --help` stays instant."""

from __future__ import annotations

import sys

import typer

from ..errors import Llm2SearchError
from .common import bare_ray_means_auto
from .demo import demo_app
from .dev import dev_app
from .duplicates import duplicates
from .eval import eval_command
from .export import export
from .index import index
from .info import info
from .query import match, query
from .remove import remove
from .serve import serve
from .verify import verify
from .watch import watch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find photos by what they show, from a sentence in English or Chinese.",
)
app.command()(index)
app.command()(query)
app.command()(serve)
app.command()(match)
app.command("eval")(eval_command)
app.command()(info)
app.command()(verify)
app.command()(export)
app.command()(duplicates)
app.command()(watch)
app.command()(remove)
app.add_typer(dev_app, name="dev")
app.add_typer(demo_app, name="demo")


def main() -> None:
    sys.argv[1:] = bare_ray_means_auto(sys.argv[1:])
    try:
        app()
    except Llm2SearchError as e:  # pragma: no cover - commands catch their own
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
