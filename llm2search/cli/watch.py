"""`llm2search watch`: index a folder, then keep the index current as files change."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import Llm2SearchError
from .common import fail, index_dir, index_option, model_option


def watch(
    path: Path = typer.Argument(..., help="Folder of photos to follow (recursively)."),
    index: Optional[Path] = index_option(),
    model: Optional[str] = model_option(),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    debounce: float = typer.Option(2.0, "--debounce", min=0.0, help="Seconds without a new event before a batch is indexed."),
    max_delay: float = typer.Option(30.0, "--max-delay", min=0.1, help="Index a batch at the latest this long after its first event."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode processes for large batches (0: in-process)."),
    max_file_bytes: Optional[int] = typer.Option(None, "--max-file-bytes", min=1, help="Refuse files larger than this many bytes (default 1 GiB); they are recorded, never read."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip what matches this gitignore-style pattern (repeatable)."),
    default_excludes: bool = typer.Option(True, "--default-excludes/--no-default-excludes", help="Skip dot-files, @eaDir, .git, ... (see README)."),
) -> None:
    """Index PATH, then follow its changes (new, changed, moved, deleted files) until Ctrl-C.
    A restart first catches up with what changed while it was not running."""
    from ..indexer.decode import DEFAULT_MAX_FILE_BYTES
    from ..indexer.exclude import ExcludeConfig
    from ..indexer.pipeline import IndexingConfig
    from ..library.watch import WatchConfig, watch_folder

    indexing = IndexingConfig(model=model, device=device, workers=workers,
                              max_file_bytes=max_file_bytes or DEFAULT_MAX_FILE_BYTES,
                              exclude=ExcludeConfig(tuple(exclude or ()), default_excludes), progress=False)

    def ready(report: Any) -> None:
        typer.echo(f"watching {report.folder}: {report.live} photos in {report.index} "
                   f"(caught up: {report.new} new, {report.changed} changed, {report.deleted} deleted); Ctrl-C stops",
                   err=True)
        sys.stderr.flush()

    def batch(report: Any, events: int) -> None:
        typer.echo(f"{events} paths changed: {report.new} new, {report.changed} changed, {report.deleted} deleted, "
                   f"{report.failed} failed; {report.live} photos", err=True)
        sys.stderr.flush()

    try:
        watch_folder(path, index_dir(index), WatchConfig(debounce, max_delay, indexing), batch, on_ready=ready)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    except Llm2SearchError as e:
        fail(e)
