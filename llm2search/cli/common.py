"""What every command shares: the index and model options, one-line errors, JSON and path output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from ..errors import InputPathError, Llm2SearchError
from ..paths import default_index_dir

TOKEN_ENV = "LLM2SEARCH_TOKEN"
INDEX_HELP = "Index directory (default: $LLM2SEARCH_HOME/index)."
SERVER_HELP = "URL of a running `llm2search serve` (e.g. http://127.0.0.1:8000): no models load here."
TOKEN_HELP = f"Bearer token of the server (default: ${TOKEN_ENV})."
MODEL_HELP = "Model preset (default, llm2clip-openai-l14-224, llm2clip-openai-b16, demo) or a model directory."


def index_option() -> Any:
    return typer.Option(None, "--index", help=INDEX_HELP)


def model_option(help: str = MODEL_HELP) -> Any:
    return typer.Option(None, "--model", help=help)


def bare_ray_means_auto(argv: list[str]) -> list[str]:
    """`--ray` without a value means `--ray auto` (typer has no optional-value options, so the
    command line is completed before it is parsed): at the end, or before another option.
    Shared by `index --ray` and `serve --ray`."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("auto")
    return out


def index_dir(index: Optional[Path]) -> Path:
    return index if index is not None else default_index_dir()


def fail(e: Exception) -> NoReturn:
    """Print an expected failure as one line on stderr and exit 1."""
    text = " ".join(str(e).split("\n")).strip() or type(e).__name__
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(1)


def echo_json(obj: Any) -> None:
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=2)
        text.encode("utf-8")
    except UnicodeEncodeError:  # file names that are not UTF-8: keep them lossless as escapes
        text = json.dumps(obj, ensure_ascii=True, indent=2)
    typer.echo(text)


def printable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"


MAX_QUERY_FILE = 256 << 20  # an image given on the command line


def read_file(path: Path, limit: int = MAX_QUERY_FILE) -> bytes:
    """A query image's bytes: only a regular file is opened for reading (a FIFO or a device
    would block or never end), and only up to `limit` bytes."""
    from ..indexer.decode import InputRefused, open_regular

    try:
        with open_regular(str(path), limit) as fh:
            return fh.read(limit + 1)
    except InputRefused as e:
        raise InputPathError(f"{path}: {e}") from e
    except OSError as e:
        raise InputPathError(f"cannot read {path}: {e.strerror or e}") from e
