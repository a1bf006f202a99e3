"""What the API sends back: JSON that survives any file name, search answers with item links, and
the error handlers that turn every expected failure into a 4xx (or 503) JSON error."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    IndexCorruptError, IndexNotFoundError, InvalidQueryError, ItemNotFoundError, Llm2SearchError,
    ModelLoadError, ModelMismatchError,
)
from ..search.query import ImageInputError
from ..search.searcher import Hit

log = logging.getLogger("llm2search.server")


class SafeJSONResponse(JSONResponse):
    """File names that are not UTF-8 carry surrogate escapes; send them as \\u escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, **extra: Any) -> SafeJSONResponse:
    return SafeJSONResponse({"error": message, "status": status, **extra}, status_code=status)


def hits_body(hits: list[Hit], k: int, took_ms: float, truncated: int = 0, token_limit: int | None = None) -> dict[str, Any]:
    """A search answer: SearchOut's fields. `truncated`: query texts cut to the token limit."""
    body = {"hits": [with_links(h.to_json()) for h in hits], "count": len(hits), "k": k, "took_ms": took_ms,
            "truncated": truncated > 0, "truncated_texts": truncated}
    if token_limit is not None:
        body["token_limit"] = token_limit
    return body


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def with_links(d: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/items/{quote(d['id'], safe=':')}"
    return {**d, "thumbnail": f"{base}/thumbnail", "image": f"{base}/image"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> SafeJSONResponse:
        details = []
        for err in exc.errors():
            loc = [str(x) for x in err.get("loc", ())]
            details.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(x for x in first["loc"] if x != "body")
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        else:
            message = f"{where}: {first['msg']}" if where else first["msg"]
        return error_response(422, message, detail=details)

    @app.exception_handler(HTTPException)
    async def httperror_response(_: Request, exc: HTTPException) -> SafeJSONResponse:
        response = error_response(exc.status_code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Llm2SearchError)
    async def usererror_response(_: Request, exc: Llm2SearchError) -> SafeJSONResponse:
        if isinstance(exc, ImageInputError):
            return error_response(413 if exc.too_large else 415, str(exc))
        if isinstance(exc, ItemNotFoundError):
            return error_response(404, str(exc))
        if isinstance(exc, InvalidQueryError):
            return error_response(422, str(exc))
        if isinstance(exc, (IndexNotFoundError, IndexCorruptError, ModelLoadError, ModelMismatchError)):
            return error_response(503, str(exc))
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> SafeJSONResponse:
        log.exception("internal error", exc_info=exc)
        return error_response(500, "internal error; see the server log")

