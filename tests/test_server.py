"""The HTTP API over loopback: every endpoint, auth, limits and bad input, against the real server
(uvicorn on a free port) and checked against the in-process Python API."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from llm2search.cli import app as cli_app
from llm2search.search.filters import SearchFilter, parse_time
from llm2search.serve.config import Limits, ServiceConfig
from llm2search.serve.security import check_bind
from llm2search.serve.server import build_app
from llm2search.serve.service import SearchService
from tests.serving import DATED, build_index, make_collection, running_server

TOKEN = "s3cret-token"
MAX_BODY = 2 << 20
MAX_PIXELS = 1_000_000
runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("served")
    photos = make_collection(base / "photos")
    index = build_index(tiny_model, photos, base / "index")
    service = SearchService(ServiceConfig(index, device="cpu", use_gpu=False, max_pixels=MAX_PIXELS))
    service.warm()
    app = build_app(service, token=TOKEN, limits=Limits(max_body=MAX_BODY))
    with running_server(app) as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        yield SimpleNamespace(url=url, photos=photos, index=index, service=service, client=client)
        client.close()


def png_bytes(size: tuple[int, int] = (80, 60), seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def search(s: SimpleNamespace, text: str, k: int = 10, **filt) -> list[dict]:
    body = {"text": text, "k": k, **({"filter": filt} if filt else {})}
    r = s.client.post("/api/search/text", json=body)
    assert r.status_code == 200, r.text
    return r.json()["hits"]


# -- auth and discovery ------------------------------------------------------------------------
PROTECTED = [
    ("GET", "/api/info", {}),
    ("POST", "/api/search/text", {"json": {"text": "a dog"}}),
    ("POST", "/api/search/image", {"files": {"image": ("a.png", b"x", "image/png")}}),
    ("POST", "/api/search/similar", {"json": {"id": "x:1"}}),
    ("POST", "/api/query", {"json": {"text": "a dog"}}),
    ("POST", "/api/embed/text", {"json": {"texts": ["a dog"]}}),
    ("POST", "/api/embed/image", {"files": {"image": ("a.png", b"x", "image/png")}}),
    ("POST", "/api/match", {"data": {"captions": ["a dog"]}}),
    ("GET", "/api/items/x:1", {}),
    ("GET", "/api/items/x:1/thumbnail", {}),
    ("GET", "/api/items/x:1/image", {}),
]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}x"}])
def test_every_endpoint_but_health_needs_the_token(served: SimpleNamespace, headers: dict) -> None:
    with httpx.Client(base_url=served.url, headers=headers, timeout=30) as anon:
        health = anon.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        for method, path, kwargs in PROTECTED:
            r = anon.request(method, path, **kwargs)
            assert r.status_code == 401, (path, r.status_code, r.text)
            assert r.json()["status"] == 401 and "token" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"


def test_openapi_spec_documents_every_endpoint(served: SimpleNamespace) -> None:
    spec = httpx.get(served.url + "/openapi.json").json()
    paths = set(spec["paths"])
    for _, path, _ in PROTECTED:
        templated = path.replace("x:1", "{item_id}")
        assert templated in paths, templated
    assert "/api/health" in paths
    assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])
    assert "TextSearchIn" in spec["components"]["schemas"] and "FilterIn" in spec["components"]["schemas"]


def test_info_reports_the_index(served: SimpleNamespace) -> None:
    info = served.client.get("/api/info").json()
    assert info["count"] == 16 + len(DATED) and info["model"]["name"] == "tiny-random"
    assert info["limits"]["max_k"] == 1000 and info["limits"]["max_pixels"] == MAX_PIXELS


def test_non_loopback_bind_requires_a_token() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.3.4.5"):
        check_bind(host, None)
    with pytest.raises(Exception, match="--token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "t")
    result = runner.invoke(cli_app, ["serve", "--host", "0.0.0.0", "--index", "/nonexistent"], env={"LLM2SEARCH_TOKEN": ""})
    assert result.exit_code == 1 and "--token" in result.stderr


# -- searches ----------------------------------------------------------------------------------
def test_text_search_english_and_chinese_match_the_python_api(served: SimpleNamespace) -> None:
    for text in ("a dog running on a beach", "一群人在徒步"):
        hits = search(served, text, k=7)
        local = served.service.index.search(text, k=7)
        assert [h["id"] for h in hits] == [h.id for h in local]
        assert [h["rank"] for h in hits] == list(range(1, 8))
        assert np.allclose([h["score"] for h in hits], [h.score for h in local], atol=1e-5)
        assert all(Path(h["path"]).is_relative_to(served.photos) for h in hits)
        assert hits[0]["thumbnail"] == f"/api/items/{hits[0]['id']}/thumbnail"


def test_k_up_to_1000_returns_every_photo_once(served: SimpleNamespace) -> None:
    hits = search(served, "photo", k=1000)
    assert len(hits) == 16 + len(DATED) == len({h["id"] for h in hits})


def test_filters_over_http(served: SimpleNamespace) -> None:
    photos = served.photos
    names = lambda hits: sorted(Path(h["path"]).name for h in hits)  # noqa: E731
    assert names(search(served, "photo", 50, folder=str(photos / "2019"))) == ["beach.jpg", "hike.jpg"]
    # A folder is matched at a path boundary: /x/20 is not a prefix folder of /x/2019.
    assert search(served, "photo", 50, folder=str(photos / "20")) == []
    assert len(search(served, "photo", 50, path_prefix=str(photos / "20"))) == 4
    assert names(search(served, "photo", 50, after="2019-08-01", before="2023-01-01")) == ["hike.jpg", "snow.png"]
    assert names(search(served, "photo", 50, before=parse_time("2019-08-01"))) == ["beach.jpg"]
    assert names(search(served, "photo", 50, min_width=150, min_height=121)) == ["city.jpg", "snow.png"]
    jpegs = search(served, "photo", 50, types=["jpg"])
    assert jpegs and all(h["format"] == "JPEG" for h in jpegs)
    by_date = search(served, "photo", 50, folder=str(photos / "2019"), sort="date")
    assert [Path(h["path"]).name for h in by_date] == ["hike.jpg", "beach.jpg"]
    assert [h["rank"] for h in by_date] == [1, 2]
    oldest = search(served, "photo", 50, folder=str(photos / "2019"), sort="date_asc")
    assert [Path(h["path"]).name for h in oldest] == ["beach.jpg", "hike.jpg"]
    everything = search(served, "photo", 50)
    cut = everything[4]["score"]
    above = search(served, "photo", 50, min_score=cut)
    assert [h["id"] for h in above] == [h["id"] for h in everything[:5]]


def test_image_search_finds_the_uploaded_photo(served: SimpleNamespace) -> None:
    target = served.photos / "2019" / "beach.jpg"
    r = served.client.post("/api/search/image", files={"image": ("q.jpg", target.read_bytes(), "image/jpeg")},
                           data={"k": "3"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 3 and hits[0]["path"] == str(target) and hits[0]["score"] > 0.999
    filtered = served.client.post(
        "/api/search/image", files={"image": ("q.jpg", target.read_bytes(), "image/jpeg")},
        data={"k": "5", "filter": json.dumps({"folder": str(served.photos / "2023")})}).json()["hits"]
    assert filtered and all("/2023/" in h["path"] for h in filtered)


def test_more_like_this_uses_the_stored_vector(served: SimpleNamespace) -> None:
    first = search(served, "a cat", k=1)[0]
    r = served.client.post("/api/search/similar", json={"id": first["id"], "k": 5})
    hits = r.json()["hits"]
    assert len(hits) == 5 and first["id"] not in [h["id"] for h in hits]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    expected = served.service.index.search_vector(served.service.index.vector_by_id(first["id"]), 6)
    assert [h["id"] for h in hits] == [h.id for h in expected if h.id != first["id"]][:5]
    with_self = served.client.post("/api/search/similar", json={"id": first["id"], "k": 1, "exclude_self": False})
    assert with_self.json()["hits"][0]["id"] == first["id"]


def test_combined_query_is_the_renormalised_weighted_sum(served: SimpleNamespace) -> None:
    image = (served.photos / "2023" / "city.jpg").read_bytes()
    vecs = np.array(served.client.post("/api/embed/text", json={"texts": ["a red car", "snow"]}).json()["vectors"])
    img = np.array(served.client.post("/api/embed/image", files={"image": ("c.jpg", image)}).json()["vectors"][0])
    expected = 0.7 * vecs[0] + 1.5 * img - 0.5 * vecs[1]
    expected /= np.linalg.norm(expected)
    body = {"text": "a red car", "text_weight": 0.7, "image": base64.b64encode(image).decode(), "image_weight": 1.5,
            "negative": ["snow"], "negative_weight": 0.5, "k": 8}
    r = served.client.post("/api/query", json=body)
    assert r.status_code == 200, r.text
    local = served.service.index.search_vector(expected, 8)
    assert [h["id"] for h in r.json()["hits"]] == [h.id for h in local]
    # Text alone through /api/query is the same as a text search.
    only_text = served.client.post("/api/query", json={"text": "一群人在徒步", "k": 5}).json()["hits"]
    assert [h["id"] for h in only_text] == [h["id"] for h in search(served, "一群人在徒步", 5)]
    item = only_text[0]["id"]
    by_item = served.client.post("/api/query", json={"item_id": item, "k": 1}).json()["hits"]
    assert by_item[0]["id"] == item


def test_embed_endpoints_return_the_models_unit_vectors(served: SimpleNamespace) -> None:
    r = served.client.post("/api/embed/text", json={"texts": ["a dog", "一只狗"]})
    data = r.json()
    assert data["model"] == "tiny-random" and data["dim"] == 32 and len(data["vectors"]) == 2
    vecs = np.array(data["vectors"])
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert np.allclose(vecs, served.service.index.embedder.embed_texts(["a dog", "一只狗"]), atol=1e-5)
    photo = served.photos / "2019" / "hike.jpg"
    img = served.client.post("/api/embed/image", files={"image": ("h.jpg", photo.read_bytes())}).json()
    stored = served.service.index.search_vector(np.array(img["vectors"][0]), 1)[0]
    assert stored.path == str(photo) and stored.score > 0.999


def test_batch_vector_search_answers_each_vector_like_a_single_search(served: SimpleNamespace) -> None:
    vecs = served.client.post("/api/embed/text", json={"texts": ["a red car", "一只狗", "snow"]}).json()["vectors"]
    r = served.client.post("/api/search/vectors", json={"vectors": vecs, "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and r.json()["k"] == 4
    for vec, result in zip(vecs, results):
        local = served.service.index.search_vector(np.array(vec), 4)
        assert [h["id"] for h in result["hits"]] == [h.id for h in local] and result["count"] == 4
        assert result["hits"][0]["thumbnail"].endswith("/thumbnail")
    folder = str(served.photos / "2023")
    filtered = served.client.post("/api/search/vectors", json={"vectors": vecs[:1], "k": 3, "filter": {"folder": folder}})
    assert all(h["path"].startswith(folder) for h in filtered.json()["results"][0]["hits"])
    for bad in ({"vectors": [vecs[0][:5]]}, {"vectors": [vecs[0], vecs[1][:5]]}, {"vectors": []},
                {"vectors": [[float("nan")] * len(vecs[0])]}, {"vectors": vecs, "k": 0}):
        answer = served.client.post("/api/search/vectors", content=json.dumps(bad, allow_nan=True),
                                    headers={"content-type": "application/json"})
        assert answer.status_code == 422, (bad if len(str(bad)) < 200 else list(bad), answer.text)
        assert answer.json()["error"]


def test_match_gives_caption_probabilities(served: SimpleNamespace) -> None:
    photo = served.photos / "2019" / "beach.jpg"
    captions = ["a diagram", "a dog", "horses", "海边的一只狗"]
    r = served.client.post("/api/match", files={"image": ("b.jpg", photo.read_bytes())},
                           data={"captions": captions})
    assert r.status_code == 200, r.text
    matches = r.json()["matches"]
    assert [m["caption"] for m in matches] == captions
    probs = np.array([m["probability"] for m in matches])
    assert abs(probs.sum() - 1) < 1e-6
    img = np.array(served.client.post("/api/embed/image", files={"image": ("b.jpg", photo.read_bytes())}).json()["vectors"][0])
    txt = np.array(served.client.post("/api/embed/text", json={"texts": captions}).json()["vectors"])
    logits = 100 * txt @ img
    assert np.allclose(probs, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), atol=1e-4)
    by_item = served.client.post("/api/match", data={"captions": captions, "item_id": search(served, "x", 1)[0]["id"]})
    assert by_item.status_code == 200 and len(by_item.json()["matches"]) == 4


def test_item_metadata_thumbnail_and_full_image(served: SimpleNamespace) -> None:
    hit = search(served, "a city", k=50, folder=str(served.photos / "2023"), types=["jpg"])[0]
    item = served.client.get(f"/api/items/{hit['id']}").json()
    assert item["path"] == hit["path"] and item["width"] == 640 and item["height"] == 480
    assert item["exif_time"] == parse_time("2023-03-02T18:00:00") == item["taken"]
    thumb = served.client.get(f"/api/items/{hit['id']}/thumbnail", params={"size": 128})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (128, 96)
    full = served.client.get(f"/api/items/{hit['id']}/image")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert full.content == Path(hit["path"]).read_bytes()


# -- bad input ---------------------------------------------------------------------------------
def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000), (10, 20, 30)).save(buf, "PNG")  # 1.2 Mpx, a few kB
    return buf.getvalue()


BAD = [
    ("malformed json", "POST", "/api/search/text", {"content": b'{"text": "a dog",', "headers": {"Content-Type": "application/json"}}, 422),
    ("json not an object", "POST", "/api/search/text", {"json": ["a dog"]}, 422),
    ("text not a string", "POST", "/api/search/text", {"json": {"text": 5}}, 422),
    ("k not an int", "POST", "/api/search/text", {"json": {"text": "dog", "k": "many"}}, 422),
    ("k a bool", "POST", "/api/search/text", {"json": {"text": "dog", "k": True}}, 422),
    ("k zero", "POST", "/api/search/text", {"json": {"text": "dog", "k": 0}}, 422),
    ("k over limit", "POST", "/api/search/text", {"json": {"text": "dog", "k": 1001}}, 422),
    ("missing text", "POST", "/api/search/text", {"json": {"k": 3}}, 422),
    ("empty text", "POST", "/api/search/text", {"json": {"text": ""}}, 422),
    ("blank text", "POST", "/api/search/text", {"json": {"text": "   \n"}}, 422),
    ("text too long", "POST", "/api/search/text", {"json": {"text": "dog " * 600}}, 422),
    ("unknown field", "POST", "/api/search/text", {"json": {"text": "dog", "kk": 3}}, 422),
    ("filter not an object", "POST", "/api/search/text", {"json": {"text": "dog", "filter": "x"}}, 422),
    ("unknown type", "POST", "/api/search/text", {"json": {"text": "dog", "filter": {"types": ["exe"]}}}, 422),
    ("bad date", "POST", "/api/search/text", {"json": {"text": "dog", "filter": {"after": "yesterday"}}}, 422),
    ("empty range", "POST", "/api/search/text", {"json": {"text": "dog", "filter": {"after": "2020-01-01", "before": "2019-01-01"}}}, 422),
    ("bad sort", "POST", "/api/search/text", {"json": {"text": "dog", "filter": {"sort": "random"}}}, 422),
    ("negative width", "POST", "/api/search/text", {"json": {"text": "dog", "filter": {"min_width": -1}}}, 422),
    ("non-image upload", "POST", "/api/search/image", {"files": {"image": ("a.png", b"not an image at all", "image/png")}}, 415),
    ("empty upload", "POST", "/api/search/image", {"files": {"image": ("a.png", b"", "image/png")}}, 415),
    ("no upload", "POST", "/api/search/image", {"data": {"k": "3"}}, 422),
    ("upload as text field", "POST", "/api/search/image", {"data": {"image": "abc"}}, 422),
    ("image k bad", "POST", "/api/search/image", {"files": {"image": ("a.png", png_bytes())}, "data": {"k": "0"}}, 422),
    ("image filter bad json", "POST", "/api/search/image", {"files": {"image": ("a.png", png_bytes())}, "data": {"filter": "{"}}, 422),
    ("too many pixels", "POST", "/api/search/image", {"files": {"image": ("big.png", big_png())}}, 413),
    ("body too large", "POST", "/api/search/image", {"files": {"image": ("a.png", b"\0" * (MAX_BODY + 10))}}, 413),
    ("json body too large", "POST", "/api/search/text", {"json": {"text": "x" * (MAX_BODY + 10)}}, 413),
    ("bad base64", "POST", "/api/query", {"json": {"image": "***not base64***"}}, 422),
    ("base64 not an image", "POST", "/api/query", {"json": {"image": base64.b64encode(b"hello").decode()}}, 415),
    ("query with nothing", "POST", "/api/query", {"json": {"k": 3}}, 422),
    ("only negative", "POST", "/api/query", {"json": {"negative": ["snow"]}}, 422),
    ("zero weight", "POST", "/api/query", {"json": {"text": "dog", "text_weight": 0}}, 422),
    ("embed no texts", "POST", "/api/embed/text", {"json": {"texts": []}}, 422),
    ("embed blank text", "POST", "/api/embed/text", {"json": {"texts": ["ok", " "]}}, 422),
    ("embed too many", "POST", "/api/embed/text", {"json": {"texts": ["a"] * 65}}, 422),
    ("embed image not image", "POST", "/api/embed/image", {"files": {"image": ("a.gif", b"GIF89a broken")}}, 415),
    ("match no captions", "POST", "/api/match", {"files": {"image": ("a.png", png_bytes())}}, 422),
    ("match blank caption", "POST", "/api/match", {"files": {"image": ("a.png", png_bytes())}, "data": {"captions": [" "]}}, 422),
    ("match no image", "POST", "/api/match", {"data": {"captions": ["a dog"]}}, 422),
    ("similar unknown id", "POST", "/api/search/similar", {"json": {"id": "000001-deadbeef:0"}}, 404),
    ("unknown item", "GET", "/api/items/000001-deadbeef:0", {}, 404),
    ("row out of range", "GET", "/api/items/{shard}:99999", {}, 404),
    ("negative row", "GET", "/api/items/{shard}:-1", {}, 404),
    ("no colon", "GET", "/api/items/{shard}", {}, 404),
    ("traversal id", "GET", "/api/items/..%2F..%2F..%2Fetc%2Fpasswd/image", {}, 404),
    ("traversal id 2", "GET", "/api/items/{shard}%2F..%2F..:0/thumbnail", {}, 404),
    ("traversal path", "GET", "/api/items/../../../etc/passwd", {}, 404),
    ("thumbnail too big", "GET", "/api/items/{shard}:0/thumbnail?size=100000", {}, 422),
    ("thumbnail size text", "GET", "/api/items/{shard}:0/thumbnail?size=big", {}, 422),
    ("unknown endpoint", "GET", "/api/nope", {}, 404),
    ("wrong method", "GET", "/api/search/text", {}, 405),
]


@pytest.mark.parametrize("name,method,path,kwargs,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_json_error(served: SimpleNamespace, name: str, method: str, path: str,
                                         kwargs: dict, status: int) -> None:
    shard = served.service.index.shards[0].info.name
    r = served.client.request(method, path.replace("{shard}", shard), **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    # The server is still healthy afterwards.
    assert served.client.get("/api/health").status_code == 200


def test_concurrent_requests_are_served_safely(served: SimpleNamespace) -> None:
    errors: list[str] = []
    image = (served.photos / "2019" / "beach.jpg").read_bytes()

    def worker(i: int) -> None:
        with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            for j in range(8):
                if (i + j) % 3 == 0:
                    r = c.post("/api/search/image", files={"image": ("b.jpg", image)}, data={"k": "3"})
                else:
                    r = c.post("/api/search/text", json={"text": f"photo number {i} {j}", "k": 5})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_requests_queued_behind_the_model_are_embedded_in_one_batch(served: SimpleNamespace) -> None:
    service = served.service
    texts = [f"photo number {i}" for i in range(12)]
    alone = np.stack([service.embed_texts([t])[0] for t in texts])
    batcher = service._embed_texts
    calls: list[int] = []
    real = batcher._fn

    def slow(items):  # hold the model so that the other callers queue up
        calls.append(len(items))
        time.sleep(0.2)
        return real(items)

    batcher._fn = slow
    try:
        results: dict[int, np.ndarray] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, service.embed_texts([texts[i]])[0]))
                   for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher._fn = real
    assert sum(calls) == len(texts) and len(calls) < len(texts) and max(calls) > 1
    assert np.allclose(np.stack([results[i] for i in range(len(texts))]), alone, atol=1e-5)


def test_one_bad_input_in_a_batch_fails_only_its_own_request(served: SimpleNamespace) -> None:
    from llm2search.serve.batching import Batcher

    def fn(items):
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return np.asarray(items) * 2

    batcher = Batcher(fn, threading.Lock(), 8)
    from concurrent.futures import Future

    good, bad = Future(), Future()
    batcher._queue += [(np.array([1, 2]), good), (np.array([-1]), bad)]
    batcher._run(list(batcher._queue))
    assert good.result().tolist() == [2, 4]
    with pytest.raises(ValueError):
        bad.result()


def test_file_names_that_are_not_utf8_are_served(tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import make_photos

    photos = tmp_path / "photos"
    make_photos(photos, 2, seed=3)
    odd = os.path.join(os.fsencode(photos), b"caf\xe9.png")
    with open(odd, "wb") as fh:
        fh.write(png_bytes(seed=9))
    index = build_index(tiny_model, photos, tmp_path / "index")
    service = SearchService(ServiceConfig(index, device="cpu", use_gpu=False))
    with running_server(build_app(service)) as url:
        r = httpx.post(url + "/api/search/text", json={"text": "photo", "k": 3})
        assert r.status_code == 200
        paths = [h["path"] for h in r.json()["hits"]]
        assert str(photos / "caf\\xe9.png") in paths  # readable, as the index stores it
        hit = next(h for h in r.json()["hits"] if "caf" in h["path"])
        assert httpx.get(url + f"/api/items/{hit['id']}").json()["path"] == hit["path"]
        assert httpx.get(url + hit["thumbnail"]).status_code == 200
        assert httpx.get(url + hit["image"]).content == open(odd, "rb").read()


def test_a_new_index_version_is_served_without_restart(tiny_model: Path, tmp_path: Path) -> None:
    from tests.conftest import make_photos

    photos = tmp_path / "photos"
    make_photos(photos, 4, seed=1)
    index = build_index(tiny_model, photos, tmp_path / "index")
    service = SearchService(ServiceConfig(index, device="cpu", use_gpu=False, reload_seconds=0))
    with running_server(build_app(service)) as url:
        assert httpx.get(url + "/api/info").json()["count"] == 4  # no token configured: open
        make_photos(photos / "more", 3, seed=2)
        build_index(tiny_model, photos, index)
        assert httpx.get(url + "/api/info").json()["count"] == 7
        hits = httpx.post(url + "/api/search/text", json={"text": "photo", "k": 10}).json()["hits"]
        assert len(hits) == 7


# -- the CLI as a client, and `serve` itself -----------------------------------------------------
def test_cli_query_and_match_through_the_server(served: SimpleNamespace) -> None:
    env = {"LLM2SEARCH_TOKEN": TOKEN}
    result = runner.invoke(cli_app, ["query", "一群人在徒步", "--server", served.url, "-k", "4", "--json",
                                     "--folder", str(served.photos / "2019")], env=env)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert sorted(Path(h["path"]).name for h in hits) == ["beach.jpg", "hike.jpg"]
    local = served.service.index.search("一群人在徒步", 4, SearchFilter(folder=str(served.photos / "2019")))
    assert [h["id"] for h in hits] == [h.id for h in local]

    photo = served.photos / "2019" / "beach.jpg"
    by_image = runner.invoke(cli_app, ["query", "--image", str(photo), "--server", served.url, "-k", "1"], env=env)
    assert by_image.exit_code == 0 and str(photo) in by_image.stdout

    remote = runner.invoke(cli_app, ["match", str(photo), "a dog", "一只猫", "--server", served.url, "--json"], env=env)
    assert remote.exit_code == 0, remote.output
    local_match = runner.invoke(cli_app, ["match", str(photo), "a dog", "一只猫", "--index", str(served.index), "--json"])
    assert local_match.exit_code == 0, local_match.output
    r, m = json.loads(remote.stdout), json.loads(local_match.stdout)
    assert [x["caption"] for x in r] == ["a dog", "一只猫"]
    assert np.allclose([x["probability"] for x in r], [x["probability"] for x in m], atol=1e-4)
    text = runner.invoke(cli_app, ["match", str(photo), "a dog", "一只猫", "--index", str(served.index)])
    assert text.exit_code == 0 and "%" in text.stdout and "一只猫" in text.stdout

    wrong = runner.invoke(cli_app, ["query", "dog", "--server", served.url], env={"LLM2SEARCH_TOKEN": "nope"})
    assert wrong.exit_code == 1 and "401" in wrong.stderr and "--token" in wrong.stderr
    down = runner.invoke(cli_app, ["query", "dog", "--server", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "cannot reach" in down.stderr


def test_cli_query_filters_locally(served: SimpleNamespace) -> None:
    result = runner.invoke(cli_app, ["query", "a dog", "--index", str(served.index), "--json", "-k", "50",
                                     "--after", "2019-08-01", "--before", "2023-01-01", "--sort", "date_asc"])
    assert result.exit_code == 0, result.output
    assert [Path(h["path"]).name for h in json.loads(result.stdout)] == ["hike.jpg", "snow.png"]
    bad = runner.invoke(cli_app, ["query", "a dog", "--index", str(served.index), "--type", "exe"])
    assert bad.exit_code == 1 and "unknown file type" in bad.stderr
    none = runner.invoke(cli_app, ["query", "a dog", "--index", str(served.index), "--min-width", "5000"])
    assert none.exit_code == 0 and "nothing passes the filters" in none.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_serves_until_stopped(served: SimpleNamespace) -> None:
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "llm2search"), "serve", "--index", str(served.index), "--port", str(port),
           "--device", "cpu", "--cpu-search"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LLM2SEARCH_TOKEN": TOKEN})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        assert httpx.post(url + "/api/search/text", json={"text": "dog"}).status_code == 401
        r = httpx.post(url + "/api/search/text", json={"text": "dog", "k": 2},
                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and len(r.json()["hits"]) == 2
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "search-form" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "serving" in proc.stderr.read()
