"""`llm2search verify`: check every file the manifest names (size, sha256, shape) and, with
--repair, drop or rebuild what is damaged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ..errors import Llm2SearchError
from .common import echo_json, fail, human_bytes, index_dir, index_option

if TYPE_CHECKING:
    from ..store.repair import RepairReport


def verify(
    index: Optional[Path] = index_option(),
    repair: bool = typer.Option(False, "--repair", help="Drop damaged shards (their photos are re-embedded by the "
                                                         "next `index` run), rebuild damaged faiss indexes."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check every file of the index against the sizes and sha256 its manifest records."""
    from ..store.repair import repair_index
    from ..store.verify import verify_index

    where = index_dir(index)
    try:
        report = verify_index(where)
        fixed = repair_index(where) if repair and not report.ok else None
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json({**report.to_json(), **({"repair": fixed.to_json()} if fixed else {})})
    else:
        for p in report.problems:
            typer.echo(f"bad: {p.file}: {p.what}", err=True)
        if report.ok:
            typer.echo(f"ok: {report.files} files ({human_bytes(report.bytes)}) of generation "
                       f"{report.generation} match their sizes and sha256", err=True)
    if fixed is not None:
        if not as_json:
            _print_repair(fixed, where)
        raise typer.Exit(0)
    if not report.ok:
        shards = ", ".join(report.bad_shards) or "none"
        typer.echo(f"error: {len(report.problems)} damaged file(s) (shards: {shards}); run "
                   f"`llm2search verify --index {where} --repair` to drop or rebuild them, then "
                   "`llm2search index` on their folders to re-embed the dropped photos", err=True)
        raise typer.Exit(1)


def _print_repair(fixed: RepairReport, where: Path) -> None:
    for name, live in fixed.dropped.items():
        typer.echo(f"dropped shard {name} ({live} photos)", err=True)
    for name in fixed.rebuilt:
        typer.echo(f"rebuilt the faiss index of shard {name} from its stored vectors", err=True)
    if fixed.retrained:
        typer.echo("retrained the quantizer from the stored vectors", err=True)
    if fixed.errors_dropped:
        typer.echo("dropped the damaged error list (those files are retried on the next run)", err=True)
    reembed = sum(fixed.dropped.values())
    if reembed:
        folders = fixed.folders[:5]
        shown = " ".join(folders) if folders else "FOLDER"
        typer.echo(f"re-embed the {reembed} dropped photos with `llm2search index {shown} --index {where}`", err=True)
