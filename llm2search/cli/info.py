"""`llm2search info`: counts, shards, index type, model and size on disk; the error list."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import Llm2SearchError
from .common import echo_json, fail, human_bytes, index_dir, index_option, printable


def info(
    index: Optional[Path] = index_option(),
    errors: bool = typer.Option(False, "--errors", help="List files that could not be indexed."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    search: bool = typer.Option(False, "--search",
                                help="Also open the index as a search would here: GPU or CPU search, and why."),
) -> None:
    """Counts, shards, index type, model and size on disk."""
    from ..search.info import index_errors, index_info

    try:
        data: Any = index_errors(index_dir(index)) if errors else index_info(index_dir(index))
        if search and not errors:
            data["search"] = _search_plan(index_dir(index))
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json(data)
    elif errors:
        for row in data:
            typer.echo(f"{printable(row['path'])}\t{row['reason']}")
        typer.echo(f"{len(data)} files could not be indexed", err=True)
    else:
        model = data["model"]
        lines = [
            ("index", data["index"]),
            ("photos", f"{data['count']:,} live ({data['deleted']:,} deleted, awaiting compaction)"),
            ("shards", data["shards"]),
            ("index type", f"{data['index_type']} ({data['factory']}, {data['metric']})"),
            ("model", f"{model['name']} [{model['fingerprint']}]"),
            ("dimensions", data["dim"]),
            ("errors", f"{data['errors']} files (llm2search info --errors)"),
            ("size on disk", human_bytes(data["size_bytes"])),
            ("updated", data["updated"]),
        ]
        if "search" in data:
            plan = data["search"]
            lines.append(("search", f"{plan['backend']}{' on ' + plan['device'] if plan['device'] else ''} "
                                    f"({plan['reason']})"))
        for key, value in lines:
            typer.echo(f"{key:>13}: {printable(str(value))}")



def _search_plan(index: Path) -> dict[str, Any]:
    """What `SearchIndex` chooses when it opens this index on this machine (imports torch when
    an NVIDIA GPU is present, so only with --search)."""
    from ..search.searcher import SearchIndex

    with SearchIndex(index, embedder=object()) as opened:
        return opened.search_plan.to_json()
