"""Who may call the API and how much they may send: loopback-only binding without a token, the
bearer token check, and the request-body limit read before the app sees a byte of the body."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Callable, Optional

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from ..errors import InvalidQueryError
from .responses import error_response


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the index beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise InvalidQueryError(
            f"binding to {host} exposes your photos to the network; pass --token (or set "
            "LLM2SEARCH_TOKEN), or bind to 127.0.0.1"
        )


def token_check(token: str | None) -> Callable[..., None]:
    """A FastAPI dependency that lets a request through only with `Authorization: Bearer token`
    (every request, when `token` is None)."""
    bearer = HTTPBearer(auto_error=False, description="the token given to `llm2search serve --token`")

    def check_token(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                                headers={"WWW-Authenticate": "Bearer"})

    return check_token


def loopback_host(header: str) -> bool:
    """True for a Host header naming this machine by a loopback name (port optional)."""
    host = header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    return is_loopback(host) or host.endswith(".localhost")


class LoopbackGuard:
    """For a server without a token, which binds only to loopback: refuse requests whose Host is
    not a loopback name (a DNS-rebinding page names its own host), and state-changing requests
    sent by a page of another origin (a cross-site form post carries its Origin, or at least
    Sec-Fetch-Site: cross-site). The server's own page is same-origin and passes."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host", "")
        if not loopback_host(host):
            await error_response(403, f"the Host header {host[:100]!r} is not a loopback name; this server "
                                      "(started without --token) answers only http://127.0.0.1 or "
                                      "http://localhost")(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            cross = headers.get("sec-fetch-site") == "cross-site"
            if cross or (origin is not None and not _loopback_origin(origin)):
                await error_response(403, "cross-site requests are refused; use the page this server "
                                          "serves, or start it with --token")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _loopback_origin(origin: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and loopback_host(parts.netloc)
    except ValueError:
        return False


class BodyLimit:
    """Reads at most `limit` bytes of a request body before the app sees it; more gets a 413."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        too_large = error_response(413, f"request body is over the limit of {self.limit:,} bytes")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            await error_response(400, "bad Content-Length header")(scope, receive, send)
            return
        if declared > self.limit:
            await too_large(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

