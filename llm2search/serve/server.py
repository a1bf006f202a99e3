"""Run the HTTP service: open the index, warm the models, serve with uvicorn until interrupted."""

from __future__ import annotations

from typing import Any

from .config import Limits, ServerConfig
from .routes import create_app
from .security import BodyLimit, LoopbackGuard, check_bind
from .service import SearchService


def build_app(service: SearchService, token: str | None = None, limits: Limits = Limits()) -> Any:
    """The ASGI app `serve` runs: the API behind the request-body limit and, without a token,
    behind the loopback guard (Host and cross-site checks)."""
    app = BodyLimit(create_app(service, token, limits), limits.max_body)
    return LoopbackGuard(app) if token is None else app


def run(config: ServerConfig, on_ready: Any = None) -> None:
    """Open the index, warm the models, serve until interrupted."""
    import uvicorn

    check_bind(config.host, config.token)
    service = SearchService(config.service)
    if config.warm:
        service.warm()
    if on_ready is not None:
        on_ready(service)
    uvicorn.run(build_app(service, config.token, config.limits), host=config.host, port=config.port,
                log_level="warning", access_log=False)

