"""`llm2search export`: live photos with metadata and vectors as one Parquet file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import Llm2SearchError
from .common import echo_json, fail, human_bytes, index_dir, index_option


def export(
    out: Path = typer.Argument(..., help="File to write, e.g. photos.parquet (replaced atomically)."),
    index: Optional[Path] = index_option(),
    fmt: str = typer.Option("parquet", "--format", help="Output format: parquet."),
    folder: Optional[str] = typer.Option(None, "--folder", help="Only photos in this folder or below."),
    vectors: str = typer.Option("float32", "--vectors", help="Vector type: float32 or float16 (half the size)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write the live photos (metadata + vectors) to one Parquet file for DuckDB, pandas, Polars."""
    from ..library.export import ExportConfig, export_index

    config = ExportConfig(fmt, vectors, os.path.realpath(os.path.expanduser(folder)) if folder else None)
    try:
        report = export_index(index_dir(index), out, config)
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json(report.__dict__)
    else:
        typer.echo(f"{report.rows:,} photos ({report.dim}-d {report.vectors} vectors) in {report.path} "
                   f"({human_bytes(report.bytes)})", err=True)
