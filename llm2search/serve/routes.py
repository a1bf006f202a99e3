"""The HTTP API's routes over a SearchService: search, embed, match, items, and the web page.

Every /api endpoint but /api/health checks the bearer token when one is set. Requests name
items only by id (`shard:row`), never by path. Bad input of any kind gets a 4xx JSON error
`{"error": message, "status": code}`."""

from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, UploadFile
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import InvalidQueryError
from ..search.filters import SearchFilter
from ..search.searcher import Hit
from .config import Limits
from .responses import SafeJSONResponse, hits_body, install_error_handlers, ms_since, with_links
from .schemas import (
    ERRORS, EmbedOut, EmbedTextIn, FilterIn, MatchOut, QueryIn, SearchOut, SimilarIn, TextSearchIn,
    VectorSearchIn, VectorSearchOut, to_filter,
)
from .security import token_check
from .service import QueryText, SearchService

WEB_DIR = Path(__file__).parent / "web"


def create_app(service: SearchService, token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(
        title="llm2search",
        version=__version__,
        description="Search photos by text (English, Chinese, ...), by image, or both; embed texts "
                    "and images with the index's LLM2CLIP model. Send `Authorization: Bearer TOKEN` "
                    "when the server was started with --token.",
        default_response_class=SafeJSONResponse,
        docs_url=None,  # FastAPI's own pages load Swagger UI / ReDoc from a CDN; ours are local
        redoc_url=None,
    )
    install_error_handlers(app)
    api = APIRouter(prefix="/api", dependencies=[Depends(token_check(token))], responses=ERRORS)

    def hits_json(hits: list[Hit], k: int, started: float, texts: list[str] | None = None) -> dict[str, Any]:
        # Returned as a response, not through response_model: no second validation of 1000 hits,
        # and paths that are not UTF-8 survive (see SafeJSONResponse).
        if not texts:
            return SafeJSONResponse(hits_body(hits, k, ms_since(started)))
        return SafeJSONResponse(hits_body(hits, k, ms_since(started), service.truncated(texts), service.token_limit))

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
                          "max_pixels": service.config.max_pixels, "query_tokens": service.token_limit}
        return data

    @api.post("/search/text", tags=["search"], response_model=SearchOut, summary="Search by a sentence")
    def search_text(body: TextSearchIn) -> Any:
        started = time.perf_counter()
        hits = service.search_text(body.text, body.k, to_filter(body.filter))
        return hits_json(hits, body.k, started, [body.text])

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
        hits = service.similar(body.id, body.k, to_filter(body.filter), body.exclude_self)
        return hits_json(hits, body.k, started)

    @api.post("/search/vectors", tags=["search"], response_model=VectorSearchOut,
              summary="Batch search by unit vectors of the index's model (up to 1,000 per request)")
    def search_vectors(body: VectorSearchIn) -> Any:
        started = time.perf_counter()
        batches = service.search_vectors(body.vectors, body.k, to_filter(body.filter))
        took = ms_since(started)
        return SafeJSONResponse({"results": [hits_body(hits, body.k, took) for hits in batches],
                                 "k": body.k, "took_ms": took})

    @api.post("/query", tags=["search"], response_model=SearchOut,
              summary="Combined query: text + image (+ item) with weights, minus negative texts")
    def combined(body: QueryIn) -> Any:
        started = time.perf_counter()
        images = [(_b64(body.image, limits.max_body), float(body.image_weight))] if body.image else []
        items = [(body.item_id, float(body.item_weight))] if body.item_id else []
        texts = [QueryText(body.text, float(body.text_weight))] if body.text else []
        hits = service.combined(texts, images, items, body.negative, float(body.negative_weight),
                                body.k, to_filter(body.filter))
        return hits_json(hits, body.k, started, [t.text for t in texts] + list(body.negative))

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
        return SafeJSONResponse(with_links(service.item(item_id)))

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
        if isinstance(data, bytes):
            return Response(data, media_type=media)
        # Streamed from the file opened and checked by the service, never re-opened by path.
        return StreamingResponse(_blocks(data), media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-bundle package's files, served here, so the API
    docs work offline; without that package, a page that links the OpenAPI spec."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if swagger_ui_path is None:
            return HTMLResponse('<!doctype html><title>llm2search API</title><h1>llm2search API</h1>'
                                '<p>The OpenAPI spec is at <a href="/openapi.json">/openapi.json</a> '
                                "(install swagger-ui-bundle-v2 for the interactive page).</p>")
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="llm2search API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    if swagger_ui_path is not None:
        app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")


def _blocks(fh: Any) -> Iterator[bytes]:
    with fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            yield block


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
