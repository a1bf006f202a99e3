"""`llm2search query` and `llm2search match`: search the index (here, or on a running server),
and score captions for one image."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import Llm2SearchError
from .client import post_json, post_multipart
from .common import (
    INDEX_HELP, SERVER_HELP, TOKEN_ENV, TOKEN_HELP, echo_json, fail, index_dir, printable, read_file,
)


def query(
    text: Optional[str] = typer.Argument(None, help="What the photo shows, e.g. '一群人在徒步' or 'a dog on a beach'."),
    index: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP),
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
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, help=TOKEN_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Only needed when the index's model moved."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as a JSON list."),
) -> None:
    """Search the index with a sentence (or an image). --server sends it to a running server."""
    from ..search.filters import SearchFilter, parse_time, parse_types

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
            hits = [h.to_json() for h in _local_search(index_dir(index), model, device, text, image, k, flt)]
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json(hits)
        return
    if not hits:
        typer.echo("no results (the index is empty, or nothing passes the filters)", err=True)
    for h in hits:
        typer.echo(f"{h['rank']:>3}  {h['score']:.4f}  {printable(h['path'])}")


def _local_search(index_dir: Path, model: Optional[str], device: str, text: Optional[str],
                  image: Optional[Path], k: int, flt: Any) -> list:
    from ..search.query import WeightedVector, combine, image_pixels
    from ..search.searcher import open_index

    idx = open_index(index_dir, model=model, device=device)
    if image is None:
        return idx.search(text or "", k=k, filter=flt)
    pixels = image_pixels(read_file(image), idx.embedder)
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
        return post_json(server, "/api/search/text", {**body, "text": text}, token)["hits"]
    body["image"] = base64.b64encode(read_file(image)).decode("ascii")
    if text:
        body["text"] = text
    return post_json(server, "/api/query", body, token)["hits"]


def match(
    image: Path = typer.Argument(..., help="An image file."),
    captions: List[str] = typer.Argument(..., help="Captions to score, e.g. 'a diagram' 'a dog' '一只猫'."),
    index: Optional[Path] = typer.Option(None, "--index", help=INDEX_HELP + " Its model is used."),
    model: Optional[str] = typer.Option(None, "--model", help="Use this model instead of the index's."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, help=TOKEN_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Zero-shot: the probability of each caption for IMAGE (softmax of 100 x cosine)."""

    try:
        data = read_file(image)
        if server:
            fields = [("captions", c) for c in captions]
            matches = post_multipart(server, "/api/match", fields, [("image", image.name, data)], token)["matches"]
        else:
            matches = _local_match(data, captions, index_dir(index), model, device)
    except Llm2SearchError as e:
        fail(e)
    if as_json:
        echo_json(matches)
        return
    for m in matches:
        typer.echo(f"{m['probability']:8.2%}  {m['caption']}")


def _local_match(data: bytes, captions: list[str], index_dir: Path, model: Optional[str], device: str) -> list:
    from ..models.embedder import Embedder
    from ..models.presets import resolve_model, spec_for_index
    from ..search.query import caption_probabilities, image_pixels
    from ..store.manifest import read_manifest

    spec = resolve_model(model) if model else spec_for_index(read_manifest(index_dir).model)
    embedder = Embedder(spec, device)
    vector = embedder.embed_pixels(image_pixels(data, embedder))[0]
    probs, cos = caption_probabilities(vector, embedder.embed_texts(list(captions)))
    return [{"caption": c, "probability": float(p), "cosine": float(s)} for c, p, s in zip(captions, probs, cos)]
