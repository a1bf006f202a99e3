"""`llm2search duplicates`: groups of near-identical photos (re-saves, resizes, bursts)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import Llm2SearchError
from .common import echo_json, fail, index_dir, index_option, printable


def duplicates(
    index: Optional[Path] = index_option(),
    threshold: float = typer.Option(0.95, "--threshold", min=-1.0, max=1.0, help="Cosine similarity at or above which two photos are near-duplicates."),
    folder: Optional[str] = typer.Option(None, "--folder", help="Only photos in this folder or below."),
    neighbors: int = typer.Option(32, "--neighbors", min=1, help="Neighbours looked at per photo in an IVF-PQ index (Flat: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the groups as JSON."),
) -> None:
    """Groups of near-identical photos, largest picture of each group first (the one to keep)."""
    from ..library.duplicates import DuplicatesConfig, find_duplicates
    from ..search.searcher import SearchIndex

    config = DuplicatesConfig(threshold, neighbors, os.path.realpath(os.path.expanduser(folder)) if folder else None)
    try:
        groups = find_duplicates(SearchIndex(index_dir(index), use_gpu=False), config)
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json([g.to_json() for g in groups])
        return
    for n, g in enumerate(groups, start=1):
        typer.echo(f"group {n} ({len(g.members)} photos)")
        for m in g.members:
            typer.echo(f"  {m.similarity:.4f}  {m.width}x{m.height}  {printable(m.path)}")
    extra = sum(len(g.members) - 1 for g in groups)
    typer.echo(f"{len(groups)} groups of near-duplicates ({extra} photos beyond the first of each)", err=True)
