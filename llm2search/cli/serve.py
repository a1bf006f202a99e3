"""`llm2search serve`: the HTTP API and web gallery (needs the `server` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import Llm2SearchError
from .common import INDEX_HELP, TOKEN_ENV, fail, index_dir


def serve(
    index: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV,
                                        help=f"Require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})."),
    model: Optional[str] = typer.Option(None, "--model", help="Only needed when the index's model moved."),
    device: str = typer.Option("auto", "--device", help="Torch device for the models: auto, cpu, cuda, ..."),
    gpu_search: bool = typer.Option(True, "--gpu-search/--cpu-search",
                                    help="Search on the GPU when torch can use one and the index fits (llm2search info --search)."),
    max_body_mb: int = typer.Option(32, "--max-body-mb", min=1, help="Largest request body (uploads), MiB."),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1, help="Largest uploaded image, pixels."),
    batching: bool = typer.Option(True, "--batching/--no-batching", hidden=True,
                                  help="Embed queued requests together (off: the baseline in bench/load.py)."),
) -> None:
    """Serve the HTTP API and the web gallery, models loaded once and kept hot."""

    try:
        from ..serve.config import Limits, ServerConfig, ServiceConfig
        from ..serve.security import check_bind
        from ..serve.server import run
    except ImportError as e:
        fail(Llm2SearchError(f"the server needs the 'server' extra ({e.name} is missing): "
                              "pip install 'llm2search[server]'"))
    try:
        check_bind(host, token)
        config = ServerConfig(
            service=ServiceConfig(index_dir(index), model=model, device=device, use_gpu=gpu_search,
                                  max_pixels=max_pixels, batching=batching),
            host=host, port=port, token=token, limits=Limits(max_body=max_body_mb << 20),
        )

        def ready(service: Any) -> None:
            shown = f"[{host}]" if ":" in host else host
            typer.echo(f"serving {service.index.dir} ({service.index.count:,} photos) at "
                       f"http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", err=True)

        run(config, on_ready=ready)
    except Llm2SearchError as e:
        fail(e)
