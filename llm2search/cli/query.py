"""`llm2search query` and `llm2search match`: search the index (here, or on a running server),
and score captions for one image."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
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
    negative: Optional[List[str]] = typer.Option(None, "--negative", help="Push results away from this text (repeatable)."),
    text_weight: float = typer.Option(1.0, "--text-weight", min=-10, max=10, help="Weight of the text in a text + image query."),
    image_weight: float = typer.Option(1.0, "--image-weight", min=-10, max=10, help="Weight of --image in a text + image query."),
    negative_weight: float = typer.Option(0.5, "--negative-weight", min=0, max=10, help="Weight subtracted per --negative text."),
    folder: Optional[str] = typer.Option(None, "--folder", help="Only photos in this folder or below."),
    after: Optional[str] = typer.Option(None, "--after", help="Taken on or after (YYYY-MM-DD; EXIF time, else mtime)."),
    before: Optional[str] = typer.Option(None, "--before", help="Taken before (YYYY-MM-DD)."),
    types: Optional[List[str]] = typer.Option(None, "--type", help="File type(s): jpg, png, heic, raw, ... (repeat or comma-separate)."),
    min_width: Optional[int] = typer.Option(None, "--min-width", min=0, help="Minimum width in pixels."),
    min_height: Optional[int] = typer.Option(None, "--min-height", min=0, help="Minimum height in pixels."),
    camera: Optional[str] = typer.Option(None, "--camera", help="Words of the EXIF camera make + model, e.g. 'canon r5'."),
    lens: Optional[str] = typer.Option(None, "--lens", help="Words of the EXIF lens name, e.g. '24-105'."),
    near: Optional[str] = typer.Option(None, "--near", help="GPS within a radius: LAT,LON,KM (e.g. 48.86,2.35,10)."),
    bbox: Optional[str] = typer.Option(None, "--bbox", help="GPS inside a box: SOUTH,WEST,NORTH,EAST in degrees."),
    sort: str = typer.Option("score", "--sort", help="score (best first), date (newest first) or date_asc."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Drop matches scoring below this cosine."),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, help=TOKEN_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Only needed when the index's model moved."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as a JSON list."),
) -> None:
    """Search the index with a sentence (or an image). --server sends it to a running server."""
    from ..models.text_encoder import MAX_QUERY_CHARS
    from ..search.filters import SearchFilter, parse_numbers, parse_time, parse_types

    try:
        flt = SearchFilter(
            folder=os.path.realpath(os.path.expanduser(folder)) if folder else None,
            after=parse_time(after) if after else None, before=parse_time(before) if before else None,
            types=parse_types(types), min_width=min_width, min_height=min_height, sort=sort,
            min_score=min_score, camera=camera, lens=lens,
            near=parse_numbers(near, 3, "--near"), bbox=parse_numbers(bbox, 4, "--bbox"),  # type: ignore[arg-type]
        )
        if text is None and image is None:
            raise Llm2SearchError("give a query text, or --image FILE")
        for t in [text or "", *(negative or [])]:
            if len(t) > MAX_QUERY_CHARS:
                raise Llm2SearchError(f"a query text is {len(t):,} characters; the limit is {MAX_QUERY_CHARS:,}")
        q = _Query(text, image, list(negative or []), text_weight, image_weight, negative_weight)
        if server:
            hits, truncated = _remote_search(server, token, q, k, flt)
        else:
            found, truncated = _local_search(index_dir(index), model, device, q, k, flt)
            hits = [h.to_json() for h in found]
    except Llm2SearchError as e:
        fail(e)
    if truncated:
        typer.echo(f"warning: {truncated}", err=True)
    if as_json:
        echo_json(hits)
        return
    if not hits:
        typer.echo("no results (the index is empty, or nothing passes the filters)", err=True)
    for h in hits:
        typer.echo(f"{h['rank']:>3}  {h['score']:.4f}  {printable(h['path'])}")


@dataclass(frozen=True)
class _Query:
    text: Optional[str]
    image: Optional[Path]
    negative: list
    text_weight: float
    image_weight: float
    negative_weight: float

    @property
    def plain_text(self) -> bool:
        return self.image is None and not self.negative and self.text_weight == 1.0


def truncation_warning(cut: int, limit: int) -> str:
    what = "the query text is" if cut == 1 else f"{cut} query texts are"
    return f"{what} longer than the model's {limit}-token limit; searched with the first {limit} tokens"


def _local_search(index_dir: Path, model: Optional[str], device: str, q: _Query, k: int,
                  flt: Any) -> tuple[list, str]:
    from ..search.query import WeightedVector, combine, image_pixels
    from ..search.searcher import open_index

    idx = open_index(index_dir, model=model, device=device)
    texts = ([q.text] if q.text else []) + q.negative
    cut = sum(idx.embedder.truncated(texts)) if texts else 0
    warning = truncation_warning(cut, idx.embedder.token_limit) if cut else ""
    if q.plain_text:
        return idx.search(q.text or "", k=k, filter=flt), warning
    parts = []
    if q.image is not None:
        pixels = image_pixels(read_file(q.image), idx.embedder)
        parts.append(WeightedVector(idx.embedder.embed_pixels(pixels)[0], q.image_weight))
    if texts:
        weights = ([q.text_weight] if q.text else []) + [-abs(q.negative_weight)] * len(q.negative)
        parts += [WeightedVector(v, w) for v, w in zip(idx.embedder.embed_texts(texts), weights)]
    if not any(p.weight > 0 for p in parts):
        raise Llm2SearchError("the query needs a text or an image with a positive weight")
    return idx.search_vector(combine(parts), k, flt), warning


def filter_body(flt: Any) -> dict:
    """A SearchFilter as the API's filter object."""
    filt = {key: v for key, v in flt.to_json().items() if v not in (None, (), "score")}
    if filt.get("types"):
        filt["types"] = list(filt["types"])
    if filt.get("near"):
        filt["near"] = dict(zip(("lat", "lon", "km"), filt["near"]))
    if filt.get("bbox"):
        filt["bbox"] = dict(zip(("south", "west", "north", "east"), filt["bbox"]))
    return filt


def _remote_search(server: str, token: Optional[str], q: _Query, k: int, flt: Any) -> tuple[list, str]:
    body: dict[str, Any] = {"k": k}
    filt = filter_body(flt)
    if filt:
        body["filter"] = filt
    if q.plain_text:
        answer = post_json(server, "/api/search/text", {**body, "text": q.text}, token)
    else:
        if q.image is not None:
            body["image"] = base64.b64encode(read_file(q.image)).decode("ascii")
            body["image_weight"] = q.image_weight
        if q.text:
            body["text"], body["text_weight"] = q.text, q.text_weight
        if q.negative:
            body["negative"], body["negative_weight"] = q.negative, q.negative_weight
        answer = post_json(server, "/api/query", body, token)
    cut = int(answer.get("truncated_texts", 0) or 0)
    warning = truncation_warning(cut, int(answer.get("token_limit", 0))) if cut else ""
    return answer["hits"], warning


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
