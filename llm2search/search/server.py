"""`llm2search serve`: the HTTP API and the web gallery over one index, models kept hot.

Every /api endpoint but /api/health checks the bearer token when one is set. Requests name
items only by id (`shard:row`), never by path. Bad input of any kind gets a 4xx JSON error
`{"error": message, "status": code}`."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (
    IndexCorruptError, IndexNotFoundError, InvalidQueryError, ItemNotFoundError, Llm2SearchError,
    ModelLoadError, ModelMismatchError,
)
from .filters import SearchFilter
from .query import ImageInputError
from .searcher import Hit
from .service import QueryText, SearchService, ServiceConfig

WEB_DIR = Path(__file__).parent / "web"
log = logging.getLogger("llm2search.server")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond gets a 4xx, never a slow or failed server."""

    max_body: int = 32 << 20  # bytes of request body (uploads included)
    max_k: int = 1000  # results per search
    max_text: int = 2000  # characters per text
    max_texts: int = 64  # texts per embed call, captions per match
    max_negatives: int = 16
    max_vectors: int = 1000  # query vectors per batch vector search
    thumbnail_sizes: tuple[int, int] = (32, 1024)  # smallest and largest thumbnail side


@dataclass(frozen=True)
class ServerConfig:
    service: ServiceConfig
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; required when host is not a loopback address
    limits: Limits = field(default_factory=Limits)
    warm: bool = True  # load and run the models before accepting requests


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


# -- request and response schemas (the OpenAPI spec is built from these) ---------------------
class FilterIn(BaseModel):
    """Restricts and orders results. Dates: 'YYYY-MM-DD', ISO date-time (UTC if no zone) or epoch seconds."""

    model_config = ConfigDict(extra="forbid")
    folder: Optional[str] = Field(None, max_length=4096, description="absolute folder: it and everything below")
    path_prefix: Optional[str] = Field(None, max_length=4096, description="raw prefix of the absolute path")
    after: Optional[StrictInt | str] = Field(None, description="taken on or after (EXIF time, else mtime)")
    before: Optional[StrictInt | str] = Field(None, description="taken before")
    types: Optional[list[str]] = Field(None, max_length=16, description="file types, e.g. ['jpg', 'png', 'heic']")
    min_width: Optional[StrictInt] = Field(None, ge=0)
    min_height: Optional[StrictInt] = Field(None, ge=0)
    min_score: Optional[StrictFloat | StrictInt] = Field(None, ge=-1, le=1)
    sort: Literal["score", "date", "date_asc"] = "score"

    def to_filter(self) -> SearchFilter:
        return SearchFilter.from_json(self.model_dump(exclude_none=True))


def _check_texts(texts: list[str], what: str) -> list[str]:
    for t in texts:
        _not_blank(t)
        if len(t) > Limits.max_text:
            raise ValueError(f"{what} is longer than {Limits.max_text} characters")
    return texts


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("text is empty")
    return v


class TextSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=Limits.max_text, examples=["一群人在徒步"])
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _not_blank(v)


class SimilarIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, max_length=200, description="an item id from a hit")
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None
    exclude_self: bool = True


class QueryIn(BaseModel):
    """A combined query: weighted sum of the parts' unit vectors minus the negative texts."""

    model_config = ConfigDict(extra="forbid")
    text: Optional[str] = Field(None, min_length=1, max_length=Limits.max_text)
    text_weight: StrictFloat | StrictInt = Field(1.0, ge=-10, le=10)
    image: Optional[str] = Field(None, description="base64 of an image file (JPEG, PNG, WebP, HEIC, ...)")
    image_weight: StrictFloat | StrictInt = Field(1.0, ge=-10, le=10)
    item_id: Optional[str] = Field(None, max_length=200, description="an indexed item as a further image")
    item_weight: StrictFloat | StrictInt = Field(1.0, ge=-10, le=10)
    negative: list[str] = Field(default_factory=list, max_length=Limits.max_negatives)
    negative_weight: StrictFloat | StrictInt = Field(0.5, ge=0, le=10)
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _not_blank(v)

    @field_validator("negative")
    @classmethod
    def _negative(cls, v: list[str]) -> list[str]:
        return _check_texts(v, "a negative text")


class VectorSearchIn(BaseModel):
    """Nearest items to each of your own unit vectors of the index's model (from /api/embed/*
    or the same model elsewhere), searched as one batch."""

    model_config = ConfigDict(extra="forbid")
    vectors: list[list[StrictFloat | StrictInt]] = Field(..., min_length=1, max_length=Limits.max_vectors)
    k: StrictInt = Field(20, ge=1, le=Limits.max_k)
    filter: Optional[FilterIn] = None


class EmbedTextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(..., min_length=1, max_length=Limits.max_texts)

    @field_validator("texts")
    @classmethod
    def _texts(cls, v: list[str]) -> list[str]:
        return _check_texts(v, "a text")


class HitOut(BaseModel):
    id: str
    rank: int
    score: float
    path: str
    size: int
    mtime_ns: int
    width: int
    height: int
    format: str
    exif_time: Optional[int]
    taken: int
    content_hash: str
    shard: str
    row: int
    thumbnail: str
    image: str


class SearchOut(BaseModel):
    hits: list[HitOut]
    count: int
    k: int
    took_ms: float


class VectorSearchOut(BaseModel):
    results: list[SearchOut]
    k: int
    took_ms: float


class EmbedOut(BaseModel):
    model: str
    dim: int
    vectors: list[list[float]]


class MatchOut(BaseModel):
    matches: list[dict[str, Any]] = Field(..., examples=[[{"caption": "a dog", "probability": 0.97, "cosine": 0.31}]])


class ErrorOut(BaseModel):
    error: str
    status: int


ERRORS = {code: {"model": ErrorOut} for code in (401, 404, 413, 415, 422)}


# -- the app -----------------------------------------------------------------------------
class SafeJSONResponse(JSONResponse):
    """File names that are not UTF-8 carry surrogate escapes; send them as \\u escapes."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, **extra: Any) -> SafeJSONResponse:
    return SafeJSONResponse({"error": message, "status": status, **extra}, status_code=status)


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
        too_large = _error(413, f"request body is over the limit of {self.limit:,} bytes")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            await _error(400, "bad Content-Length header")(scope, receive, send)
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


def create_app(service: SearchService, token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(
        title="llm2search",
        version=__version__,
        description="Search photos by text (English, Chinese, ...), by image, or both; embed texts "
                    "and images with the index's LLM2CLIP model. Send `Authorization: Bearer TOKEN` "
                    "when the server was started with --token.",
        default_response_class=SafeJSONResponse,
    )
    bearer = HTTPBearer(auto_error=False, description="the token given to `llm2search serve --token`")

    def check_token(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                                headers={"WWW-Authenticate": "Bearer"})

    _install_error_handlers(app)
    api = APIRouter(prefix="/api", dependencies=[Depends(check_token)], responses=ERRORS)

    def hits_json(hits: list[Hit], k: int, started: float) -> dict[str, Any]:
        # Returned as a response, not through response_model: no second validation of 1000 hits,
        # and paths that are not UTF-8 survive (see SafeJSONResponse).
        return SafeJSONResponse(_hits_body(hits, k, _ms_since(started)))

    def form_k(k: int) -> int:
        if not 1 <= k <= limits.max_k:
            raise InvalidQueryError(f"k must be between 1 and {limits.max_k}, got {k}")
        return k

    def form_filter(text: Optional[str]) -> SearchFilter:
        if not text:
            return SearchFilter()
        try:
            return FilterIn.model_validate_json(text).to_filter()
        except ValueError as e:
            raise InvalidQueryError(f"the filter field is not a valid filter object: {_first_line(e)}") from e

    def read_upload(upload: UploadFile) -> bytes:
        data = upload.file.read(limits.max_body + 1)
        if len(data) > limits.max_body:
            raise HTTPException(413, f"the image is over the limit of {limits.max_body:,} bytes")
        return data

    @app.get("/api/health", tags=["server"], summary="Liveness (no token needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @api.get("/info", tags=["server"], summary="Index counts, model, shards and limits")
    def info() -> dict[str, Any]:
        data = service.info()
        data["limits"] = {"max_k": limits.max_k, "max_text": limits.max_text, "max_body": limits.max_body,
                          "max_texts": limits.max_texts, "max_vectors": limits.max_vectors,
                          "max_pixels": service.config.max_pixels}
        return data

    @api.post("/search/text", tags=["search"], response_model=SearchOut, summary="Search by a sentence")
    def search_text(body: TextSearchIn) -> Any:
        started = time.perf_counter()
        hits = service.search_text(body.text, body.k, _filter(body.filter))
        return hits_json(hits, body.k, started)

    @api.post("/search/image", tags=["search"], response_model=SearchOut,
              summary="Search by an uploaded image (multipart field 'image')")
    def search_image(image: UploadFile = File(..., description="JPEG, PNG, WebP, HEIC, ..."),
                     k: int = Form(20, description=f"1..{limits.max_k}"),
                     filter: Optional[str] = Form(None, description="a filter object as JSON text")) -> Any:
        started = time.perf_counter()
        hits = service.search_image(read_upload(image), form_k(k), form_filter(filter))
        return hits_json(hits, k, started)

    @api.post("/search/similar", tags=["search"], response_model=SearchOut,
              summary="More like this: search by an indexed item's stored vector")
    def search_similar(body: SimilarIn) -> Any:
        started = time.perf_counter()
        hits = service.similar(body.id, body.k, _filter(body.filter), body.exclude_self)
        return hits_json(hits, body.k, started)

    @api.post("/search/vectors", tags=["search"], response_model=VectorSearchOut,
              summary="Batch search by unit vectors of the index's model (up to 1,000 per request)")
    def search_vectors(body: VectorSearchIn) -> Any:
        started = time.perf_counter()
        batches = service.search_vectors(body.vectors, body.k, _filter(body.filter))
        took = _ms_since(started)
        return SafeJSONResponse({"results": [_hits_body(hits, body.k, took) for hits in batches],
                                 "k": body.k, "took_ms": took})

    @api.post("/query", tags=["search"], response_model=SearchOut,
              summary="Combined query: text + image (+ item) with weights, minus negative texts")
    def combined(body: QueryIn) -> Any:
        started = time.perf_counter()
        images = [(_b64(body.image, limits.max_body), float(body.image_weight))] if body.image else []
        items = [(body.item_id, float(body.item_weight))] if body.item_id else []
        texts = [QueryText(body.text, float(body.text_weight))] if body.text else []
        hits = service.combined(texts, images, items, body.negative, float(body.negative_weight),
                                body.k, _filter(body.filter))
        return hits_json(hits, body.k, started)

    @api.post("/embed/text", tags=["embed"], response_model=EmbedOut, summary="Unit vectors of texts")
    def embed_text(body: EmbedTextIn) -> Any:
        vectors = service.embed_texts(body.texts)
        return SafeJSONResponse({"model": _model_name(service), "dim": int(vectors.shape[1]),
                                 "vectors": vectors.tolist()})

    @api.post("/embed/image", tags=["embed"], response_model=EmbedOut,
              summary="Unit vector of an uploaded image (multipart field 'image')")
    def embed_image(image: UploadFile = File(...)) -> Any:
        vector = service.embed_image(read_upload(image))
        return SafeJSONResponse({"model": _model_name(service), "dim": int(vector.shape[0]),
                                 "vectors": [vector.tolist()]})

    @api.post("/match", tags=["embed"], response_model=MatchOut,
              summary="Zero-shot: probability of each caption for an image (softmax of 100 x cosine)")
    def match(captions: list[str] = Form(..., description="repeat the field once per caption"),
              image: Optional[UploadFile] = File(None), item_id: Optional[str] = Form(None)) -> Any:
        if not 1 <= len(captions) <= limits.max_texts:
            raise InvalidQueryError(f"give between 1 and {limits.max_texts} captions")
        for c in captions:
            if not c.strip() or len(c) > limits.max_text:
                raise InvalidQueryError(f"captions must be non-empty and at most {limits.max_text} characters")
        data = read_upload(image) if image is not None else None
        return SafeJSONResponse({"matches": service.match(captions, image=data, item_id=item_id)})

    @api.get("/items/{item_id}", tags=["items"], summary="Metadata of an indexed item")
    def item(item_id: str) -> Any:
        return SafeJSONResponse(_with_links(service.item(item_id)))

    @api.get("/items/{item_id}/thumbnail", tags=["items"], summary="JPEG thumbnail (longest side = size)",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(item_id: str, size: int = Query(256, ge=limits.thumbnail_sizes[0],
                                                   le=limits.thumbnail_sizes[1])) -> Response:
        return Response(service.thumbnail(item_id, size), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @api.get("/items/{item_id}/image", tags=["items"], summary="The full image, in a format browsers show",
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def full_image(item_id: str) -> Response:
        data, media = service.full_image(item_id)
        if isinstance(data, Path):
            return FileResponse(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})
        return Response(data, media_type=media)

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _filter(f: Optional[FilterIn]) -> SearchFilter:
    return f.to_filter() if f is not None else SearchFilter()


def _hits_body(hits: list[Hit], k: int, took_ms: float) -> dict[str, Any]:
    """A search answer: SearchOut's fields."""
    return {"hits": [_hit_json(h) for h in hits], "count": len(hits), "k": k, "took_ms": took_ms}


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _hit_json(h: Hit) -> dict[str, Any]:
    return _with_links(h.to_json())


def _with_links(d: dict[str, Any]) -> dict[str, Any]:
    base = f"/api/items/{quote(d['id'], safe=':')}"
    return {**d, "thumbnail": f"{base}/thumbnail", "image": f"{base}/image"}


def _model_name(service: SearchService) -> str:
    return str(service.index.manifest.model.get("name"))


def _b64(text: str, limit: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidQueryError("'image' is not valid base64") from e
    if len(data) > limit:
        raise HTTPException(413, f"the image is over the limit of {limit:,} bytes")
    return data


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _install_error_handlers(app: FastAPI) -> None:
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
        return _error(422, message, detail=details)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> SafeJSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(Llm2SearchError)
    async def user_error(_: Request, exc: Llm2SearchError) -> SafeJSONResponse:
        if isinstance(exc, ImageInputError):
            return _error(413 if exc.too_large else 415, str(exc))
        if isinstance(exc, ItemNotFoundError):
            return _error(404, str(exc))
        if isinstance(exc, InvalidQueryError):
            return _error(422, str(exc))
        if isinstance(exc, (IndexNotFoundError, IndexCorruptError, ModelLoadError, ModelMismatchError)):
            return _error(503, str(exc))
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> SafeJSONResponse:
        log.exception("internal error", exc_info=exc)
        return _error(500, "internal error; see the server log")


def build_app(service: SearchService, token: str | None = None, limits: Limits = Limits()) -> Any:
    """The ASGI app `serve` runs: the API behind the request-body limit."""
    return BodyLimit(create_app(service, token, limits), limits.max_body)


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
