"""`llm2search remove`: forget a folder or a file (for one that was moved or deleted)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import Llm2SearchError
from .common import echo_json, fail, index_dir, index_option


def remove(
    path: Path = typer.Argument(..., help="Folder (everything under it) or file to drop from the index; it need not exist."),
    index: Optional[Path] = index_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Drop a folder's or a file's entries from the index (the photos on disk are not touched)."""
    from dataclasses import asdict

    from ..indexer.remove import remove_path

    try:
        report = remove_path(path, index_dir(index))
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json(asdict(report))
    else:
        typer.echo(f"removed {report.removed} photos (and {report.errors_removed} recorded errors) under "
                   f"{report.path}; {report.live} photos left", err=True)
