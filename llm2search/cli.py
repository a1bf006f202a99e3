"""The `llm2search` command. Heavy modules (torch, transformers, faiss) load inside commands,
so `llm2search --help` stays instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .cli_demo import demo_app
from .errors import Llm2SearchError
from .paths import default_index_dir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find photos by what they show, from a sentence in English or Chinese.",
)
dev_app = typer.Typer(no_args_is_help=True, help="Tools for developers: tiny models and test data.")
app.add_typer(dev_app, name="dev")
app.add_typer(demo_app, name="demo")

IndexOpt = typer.Option(None, "--index", help="Index directory (default: $LLM2SEARCH_HOME/index).")
ModelOpt = typer.Option(
    None, "--model", help="Model preset (default, llm2clip-openai-l14-224, llm2clip-openai-b16, demo) or a model directory."
)


def _index_dir(index: Optional[Path]) -> Path:
    return index if index is not None else default_index_dir()


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


def _echo_json(obj: Any) -> None:
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
        text.encode("utf-8")
    except UnicodeEncodeError:  # file names that are not UTF-8: keep them lossless as escapes
        text = json.dumps(obj, ensure_ascii=True, indent=2)
    typer.echo(text)


def _printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@app.command()
def index(
    path: Path = typer.Argument(..., help="Folder of photos (searched recursively) or one image."),
    index: Optional[Path] = IndexOpt,
    model: Optional[str] = ModelOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per model batch (default: 32 on CPU, sized to GPU memory)."),
    device: str = typer.Option("auto", "--device", help="auto (all GPUs, else CPU), cpu, cuda:1, cuda:0,cuda:1, ..."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode processes (0: in-process)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help="Refuse images larger than this."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Retry files that failed before."),
    shard_size: int = typer.Option(100_000, "--shard-size", min=1, help="Rows per shard before a new one starts."),
    commit_seconds: float = typer.Option(60.0, "--commit-seconds", min=0, help="Commit finished work at least this often."),
    retrain: bool = typer.Option(False, "--retrain", help="Retrain the IVF-PQ quantizer from stored vectors now."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
) -> None:
    """Index a folder of photos (new, changed and deleted files are picked up on a rerun)."""
    from .indexer.pipeline import IndexingConfig, index_folder
    from .models.preprocess import DEFAULT_MAX_PIXELS

    config = IndexingConfig(
        model=model, device=device, batch_size=batch_size, workers=workers,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, retry_errors=retry_errors,
        shard_size=shard_size, commit_seconds=commit_seconds, retrain=retrain,
        progress=not (quiet or as_json),
    )
    try:
        report = index_folder(path, _index_dir(index), config)
    except Llm2SearchError as e:
        _fail(e)
    if as_json:
        _echo_json(report.to_json())
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


# query, serve and match live in cli_search.py (the search backend's commands).
from .cli_search import register as _register_search  # noqa: E402

_register_search(app)

# eval lives in cli_eval.py (retrieval evaluation, llm2search/eval/).
from .cli_eval import eval_command  # noqa: E402

app.command("eval")(eval_command)


@app.command()
def info(
    index: Optional[Path] = IndexOpt,
    errors: bool = typer.Option(False, "--errors", help="List files that could not be indexed."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Counts, shards, index type, model and size on disk."""
    from .search.info import index_errors, index_info

    try:
        data: Any = index_errors(_index_dir(index)) if errors else index_info(_index_dir(index))
    except Llm2SearchError as e:
        _fail(e)
    if as_json:
        _echo_json(data)
    elif errors:
        for row in data:
            typer.echo(f"{_printable(row['path'])}\t{row['reason']}")
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
            ("size on disk", _human_bytes(data["size_bytes"])),
            ("updated", data["updated"]),
        ]
        for key, value in lines:
            typer.echo(f"{key:>13}: {_printable(str(value))}")


@dev_app.command("make-tiny-model")
def make_tiny_model(
    out: Path = typer.Argument(..., help="Directory to create."),
    seed: int = typer.Option(0, "--seed"),
    dim: int = typer.Option(32, "--dim", help="Shared embedding size."),
    image_size: int = typer.Option(64, "--image-size"),
) -> None:
    """Write a random tiny model in the real LLM2CLIP layout (usable as --model DIR)."""
    from .models.tiny import TinyModelConfig, build_tiny_model

    path = build_tiny_model(out, TinyModelConfig(seed=seed, dim=dim, image_size=image_size))
    typer.echo(str(path))


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


def main() -> None:
    try:
        app()
    except Llm2SearchError as e:  # pragma: no cover - commands catch their own
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
