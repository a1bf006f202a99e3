"""`llm2search serve`: the HTTP API and web gallery (needs the `server` extra); with `--ray`, the
same API deployed on Ray Serve (needs the `cluster` extra too; docs/ray-serve.md)."""

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
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="[ADDRESS]", show_default=False,
        help="Deploy on Ray Serve (shard groups, a router, a query encoder; docs/ray-serve.md) on the cluster "
             "at ADDRESS: `auto` (the default: $RAY_ADDRESS or the one this machine runs), host:port, "
             "ray://host:port, or `local` (start one on this machine). Needs llm2search[cluster]."),
    groups: int = typer.Option(2, "--groups", min=1, help="With --ray: shard groups (each holds ~1/N of the rows)."),
    group_replicas: int = typer.Option(1, "--group-replicas", min=1, help="With --ray: replicas of each group."),
    router_replicas: int = typer.Option(1, "--router-replicas", min=1, help="With --ray: replicas of the router."),
    encoder_replicas: int = typer.Option(1, "--encoder-replicas", min=1,
                                         help="With --ray: replicas of the query encoder (one GPU each where "
                                              "the cluster has GPUs)."),
    replica_cpus: float = typer.Option(1.0, "--cpus-per-replica", min=0.01,
                                       help="With --ray: Ray CPUs reserved by each replica (fractions allowed)."),
) -> None:
    """Serve the HTTP API and the web gallery, models loaded once and kept hot."""

    try:
        from ..serve.config import Limits, RayServeConfig, ServerConfig, ServiceConfig
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

        shown = f"[{host}]" if ":" in host else host

        def ready(service: Any) -> None:
            typer.echo(f"serving {service.index.dir} ({service.index.count:,} photos) at "
                       f"http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", err=True)

        if ray is not None:
            _serve_on_ray(RayServeConfig(config, groups=groups, group_replicas=group_replicas,
                                         router_replicas=router_replicas, encoder_replicas=encoder_replicas,
                                         group_cpus=replica_cpus, router_cpus=replica_cpus,
                                         encoder_cpus=replica_cpus),
                          ray, f"http://{shown}:{port}/")
        else:
            run(config, on_ready=ready)
    except Llm2SearchError as e:
        fail(e)


def _serve_on_ray(config: Any, address: str, url: str) -> None:
    from ..cluster.connect import INSTALL_HINT, connect
    from ..store.manifest import read_manifest

    try:
        from ..serve import ray_app
    except ImportError as e:
        fail(Llm2SearchError(f"--ray needs the 'cluster' extra ({e.name} is missing): {INSTALL_HINT}"))
    read_manifest(config.server.service.index_dir)  # a missing index: one line, before Ray starts

    def ready(count: int) -> None:
        typer.echo(f"serving {config.server.service.index_dir} ({count:,} photos) on Ray Serve in "
                   f"{config.groups} shard group(s) at {url}  (API docs: /docs; Ctrl-C stops)", err=True)

    connection = connect(address)  # ends a cluster only where it started one (`local`)
    try:
        ray_app.run(config, on_ready=ready)
    finally:
        connection.close()
