"""`llm2search index`: bring an index up to date with a folder of photos."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import Llm2SearchError
from .common import echo_json, fail, index_dir, index_option, model_option


def index(
    path: Path = typer.Argument(..., help="Folder of photos (searched recursively) or one image; with --ray also a Parquet listing (a `path` column)."),
    index: Optional[Path] = index_option(),
    model: Optional[str] = model_option(),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per model batch (default: 32 on CPU, sized to GPU memory)."),
    device: str = typer.Option("auto", "--device", help="auto (all GPUs, else CPU), cpu, cuda:1, cuda:0,cuda:1, ..."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode processes (0: in-process)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Refuse images larger than this."),
    max_file_bytes: Optional[int] = typer.Option(None, "--max-file-bytes", min=1, help="Refuse files larger than this many bytes (default 1 GiB); they are recorded, never read."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Retry files that failed before."),
    shard_size: int = typer.Option(100_000, "--shard-size", min=1, help="Rows per shard before a new one starts."),
    commit_seconds: float = typer.Option(60.0, "--commit-seconds", min=0, help="Commit finished work at least this often."),
    retrain: bool = typer.Option(False, "--retrain", help="Retrain the IVF-PQ quantizer from stored vectors now."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip files and folders matching this gitignore-style pattern, relative to PATH (repeatable); indexed ones are dropped."),
    default_excludes: bool = typer.Option(True, "--default-excludes/--no-default-excludes", help="Skip dot-files, @eaDir, .git, node_modules, thumbnail caches, ... (see README)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="[ADDRESS]",
        help="Index on a Ray cluster: `auto` (the running cluster, the default when no address is given), "
             "host:port, ray://host:port, or `local` (start one on this machine). Needs llm2search[cluster]."),
    unit_files: int = typer.Option(10_000, "--unit-files", min=1, help="With --ray: files per work unit (one shard, resumed as a whole)."),
    embed_actors: Optional[int] = typer.Option(None, "--embed-actors", min=1, help="With --ray: model actors (default: one per GPU, else one per 4 CPUs)."),
    actor_gpus: Optional[float] = typer.Option(None, "--actor-gpus", min=0, help="With --ray: GPUs per model actor (default: 1 on a cluster with GPUs, else 0)."),
    actor_cpus: float = typer.Option(1.0, "--actor-cpus", min=0.01, help="With --ray: CPUs per model actor."),
    stall_seconds: float = typer.Option(600.0, "--stall-seconds", min=1, help="With --ray: stop with an error when no stage progresses this long."),
) -> None:
    """Index a folder of photos (new, changed and deleted files are picked up on a rerun)."""
    from .. import index_folder
    from ..indexer.decode import DEFAULT_MAX_FILE_BYTES
    from ..indexer.exclude import ExcludeConfig
    from ..indexer.pipeline import IndexingConfig
    from ..models.preprocess import DEFAULT_MAX_PIXELS

    cluster = None
    if ray is not None:
        from ..cluster.config import RayConfig

        cluster = RayConfig(address=ray, unit_files=unit_files, embed_actors=embed_actors, actor_gpus=actor_gpus,
                            actor_cpus=actor_cpus, stall_seconds=stall_seconds)
    config = IndexingConfig(
        model=model, device=device, batch_size=batch_size, workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, retry_errors=retry_errors,
        max_file_bytes=max_file_bytes or DEFAULT_MAX_FILE_BYTES,
        shard_size=shard_size, commit_seconds=commit_seconds, retrain=retrain,
        exclude=ExcludeConfig(tuple(exclude or ()), default_excludes), progress=not (quiet or as_json),
        ray=cluster,
    )
    try:
        report = index_folder(path, index_dir(index), config)
    except Llm2SearchError as e:
        fail(e)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json(report.to_json())
    elif not quiet:
        typer.echo(
            f"{report.live} photos in {report.index} ({report.index_type}); this run: "
            f"{report.new} new, {report.changed} changed, {report.deleted} deleted, "
            f"{report.unchanged} unchanged, {report.reused} reused, {report.failed} failed "
            f"({report.known_bad} failed before), {report.embedded} embedded in {report.seconds:.1f}s "
            f"({report.images_per_second:.1f} images/s)",
            err=True,
        )
        if report.failed:
            typer.echo("see the failures with `llm2search info --errors`", err=True)
