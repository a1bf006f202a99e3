"""The search-side commands: `query` (local or via a running server), `serve` and `match`.
Registered on the main app by cli.py; heavy modules load inside the commands."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, List, Optional

import typer

from .errors import Llm2SearchError

TOKEN_ENV = "LLM2SEARCH_TOKEN"
_INDEX_HELP = "Index directory (default: $LLM2SEARCH_HOME/index)."
_SERVER_HELP = "URL of a running `llm2search serve` (e.g. http://127.0.0.1:8000): no models load here."
_TOKEN_HELP = f"Bearer token of the server (default: ${TOKEN_ENV})."


def query(
    text: Optional[str] = typer.Argument(None, help="What the photo shows, e.g. '一群人在徒步' or 'a dog on a beach'."),
    index: Optional[Path] = typer.Option(None, "--index", help=_INDEX_HELP),
    k: int = typer.Option(10, "-k", "--top-k", help="Number of results."),
    image: Optional[Path] = typer.Option(None, "--image", help="Search by this image instead of (or with) text."),
    folder: Optional[str] = typer.Option(None, "--folder", help="Only photos in this folder or below."),
    after: Optional[str] = typer.Option(None, "--after", help="Taken on or after (YYYY-MM-DD; EXIF time, else mtime)."),
    before: Optional[str] = typer.Option(None, "--before", help="Taken before (YYYY-MM-DD)."),
    types: Optional[List[str]] = typer.Option(None, "--type", help="File type(s): jpg, png, heic, ... (repeat or comma-separate)."),
    min_width: Optional[int] = typer.Option(None, "--min-width", min=0, help="Minimum width in pixels."),
    min_height: Optional[int] = typer.Option(None, "--min-height", min=0, help="Minimum height in pixels."),
    sort: str = typer.Option("score", "--sort", help="score (best first), date (newest first) or date_asc."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop matches scoring below this cosine."),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, help=_TOKEN_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Only needed when the index's model moved."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as a JSON list."),
) -> None:
    """Search the index with a sentence (or an image). --server sends it to a running server."""
    from .cli import _echo_json, _fail, _index_dir, _printable
    from .search.filters import SearchFilter, parse_time, parse_types

    try:
        flt = SearchFilter(
            folder=os.path.abspath(os.path.expanduser(folder)) if folder else None,
            after=parse_time(after) if after else None, before=parse_time(before) if before else None,
            types=parse_types(types), min_width=min_width, min_height=min_height, sort=sort,
            min_score=min_score,
        )
        if text is None and image is None:
            raise Llm2SearchError("give a query text, or --image FILE")
        if server:
            hits = _remote_search(server, token, text, image, k, flt)
        else:
            hits = [h.to_json() for h in _local_search(_index_dir(index), model, device, text, image, k, flt)]
    except Llm2SearchError as e:
        _fail(e)
    if as_json:
        _echo_json(hits)
        return
    if not hits:
        typer.echo("no results (the index is empty, or nothing passes the filters)", err=True)
    for h in hits:
        typer.echo(f"{h['rank']:>3}  {h['score']:.4f}  {_printable(h['path'])}")


def _local_search(index_dir: Path, model: Optional[str], device: str, text: Optional[str],
                  image: Optional[Path], k: int, flt: Any) -> list:
    from .search.query import WeightedVector, combine, image_pixels
    from .search.searcher import open_index

    idx = open_index(index_dir, model=model, device=device)
    if image is None:
        return idx.search(text or "", k=k, filter=flt)
    pixels = image_pixels(_read(image), idx.embedder)
    parts = [WeightedVector(idx.embedder.embed_pixels(pixels)[0], 1.0)]
    if text:
        parts.append(WeightedVector(idx.embedder.embed_texts([text])[0], 1.0))
    return idx.search_vector(combine(parts), k, flt)


def _remote_search(server: str, token: Optional[str], text: Optional[str], image: Optional[Path],
                   k: int, flt: Any) -> list:
    filt = {key: v for key, v in flt.to_json().items() if v not in (None, (), "score")}
    if filt.get("types"):
        filt["types"] = list(filt["types"])
    body: dict[str, Any] = {"k": k}
    if filt:
        body["filter"] = filt
    if image is None:
        return _post_json(server, "/api/search/text", {**body, "text": text}, token)["hits"]
    body["image"] = base64.b64encode(_read(image)).decode("ascii")
    if text:
        body["text"] = text
    return _post_json(server, "/api/query", body, token)["hits"]


def serve(
    index: Optional[Path] = typer.Option(None, "--index", help=_INDEX_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV,
                                        help=f"Require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})."),
    model: Optional[str] = typer.Option(None, "--model", help="Only needed when the index's model moved."),
    device: str = typer.Option("auto", "--device", help="Torch device for the models: auto, cpu, cuda, ..."),
    gpu_search: bool = typer.Option(True, "--gpu-search/--cpu-search",
                                    help="Move shards to the GPU when faiss has GPU support."),
    max_body_mb: int = typer.Option(32, "--max-body-mb", min=1, help="Largest request body (uploads), MiB."),
    max_pixels: int = typer.Option(50_000_000, "--max-pixels", min=1, help="Largest uploaded image, pixels."),
    batching: bool = typer.Option(True, "--batching/--no-batching", hidden=True,
                                  help="Embed queued requests together (off: the baseline in bench/load.py)."),
) -> None:
    """Serve the HTTP API and the web gallery, models loaded once and kept hot."""
    from .cli import _fail, _index_dir

    try:
        from .search.server import Limits, ServerConfig, check_bind, run
        from .search.service import ServiceConfig
    except ImportError as e:
        _fail(Llm2SearchError(f"the server needs the 'server' extra ({e.name} is missing): "
                              "pip install 'llm2search[server]'"))
    try:
        check_bind(host, token)
        config = ServerConfig(
            service=ServiceConfig(_index_dir(index), model=model, device=device, use_gpu=gpu_search,
                                  max_pixels=max_pixels, batching=batching),
            host=host, port=port, token=token, limits=Limits(max_body=max_body_mb << 20),
        )

        def ready(service: Any) -> None:
            shown = f"[{host}]" if ":" in host else host
            typer.echo(f"serving {service.index.dir} ({service.index.count:,} photos) at "
                       f"http://{shown}:{port}/  (API docs: /docs; Ctrl-C stops)", err=True)

        run(config, on_ready=ready)
    except Llm2SearchError as e:
        _fail(e)


def match(
    image: Path = typer.Argument(..., help="An image file."),
    captions: List[str] = typer.Argument(..., help="Captions to score, e.g. 'a diagram' 'a dog' '一只猫'."),
    index: Optional[Path] = typer.Option(None, "--index", help=_INDEX_HELP + " Its model is used."),
    model: Optional[str] = typer.Option(None, "--model", help="Use this model instead of the index's."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    server: Optional[str] = typer.Option(None, "--server", help=_SERVER_HELP),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, help=_TOKEN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Zero-shot: the probability of each caption for IMAGE (softmax of 100 x cosine)."""
    from .cli import _echo_json, _fail, _index_dir

    try:
        data = _read(image)
        if server:
            fields = [("captions", c) for c in captions]
            matches = _post_multipart(server, "/api/match", fields, [("image", image.name, data)], token)["matches"]
        else:
            matches = _local_match(data, captions, _index_dir(index), model, device)
    except Llm2SearchError as e:
        _fail(e)
    if as_json:
        _echo_json(matches)
        return
    for m in matches:
        typer.echo(f"{m['probability']:8.2%}  {m['caption']}")


def _local_match(data: bytes, captions: list[str], index_dir: Path, model: Optional[str], device: str) -> list:
    from .models.embedder import Embedder
    from .models.presets import resolve_model, spec_for_index
    from .search.query import caption_probabilities, image_pixels
    from .store.manifest import read_manifest

    spec = resolve_model(model) if model else spec_for_index(read_manifest(index_dir).model)
    embedder = Embedder(spec, device)
    vector = embedder.embed_pixels(image_pixels(data, embedder))[0]
    probs, cos = caption_probabilities(vector, embedder.embed_texts(list(captions)))
    return [{"caption": c, "probability": float(p), "cosine": float(s)} for c, p, s in zip(captions, probs, cos)]


# -- a small HTTP client (stdlib only: the CLI must not need the server extra) ---------------
def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise Llm2SearchError(f"cannot read {path}: {e.strerror or e}") from e


def _post_json(server: str, path: str, body: dict, token: Optional[str]) -> Any:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return _send(server, path, data, "application/json", token)


def _post_multipart(server: str, path: str, fields: list[tuple[str, str]],
                    files: list[tuple[str, str, bytes]], token: Optional[str]) -> Any:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode("utf-8") + b"\r\n")
    for name, filename, content in files:
        media = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        safe = filename.encode("ascii", "replace").decode().replace('"', "_")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                     f"Content-Type: {media}\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return _send(server, path, b"".join(parts), f"multipart/form-data; boundary={boundary}", token)


def _send(server: str, path: str, data: bytes, content_type: str, token: Optional[str]) -> Any:
    url = server.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise Llm2SearchError(f"--server must be an http:// or https:// URL, got {server!r}")
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error") or e.reason
        except (ValueError, AttributeError):
            message = e.reason
        hint = " (pass --token or set LLM2SEARCH_TOKEN)" if e.code == 401 else ""
        raise Llm2SearchError(f"the server answered {e.code}: {message}{hint}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Llm2SearchError(f"cannot reach {server}: {reason}; start one with `llm2search serve`") from e


def register(app: typer.Typer) -> None:
    """Add query, serve and match to the main command."""
    app.command()(query)
    app.command()(serve)
    app.command()(match)
