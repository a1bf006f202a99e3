"""HTTP: 4xx, never 5xx, and no way in. Every endpoint is fuzzed from its OpenAPI schema
(schemathesis); a tokenless server refuses foreign Host headers and cross-site posts; /image
and /thumbnail serve only the indexed photo itself, from under an indexed folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from llm2search.serve.config import Limits, ServiceConfig
from llm2search.serve.server import build_app
from llm2search.serve.service import SearchService
from tests.serving import build_index, make_collection, running_server

TOKEN = "fuzz-token"
FUZZ_EXAMPLES = 40  # per operation; 13 operations: about a minute on this machine


@pytest.fixture(scope="module")
def http(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("http")
    photos = make_collection(base / "photos")
    index = build_index(tiny_model, photos, base / "index")
    service = SearchService(ServiceConfig(index, device="cpu", use_gpu=False, max_pixels=1_000_000))
    service.warm()
    return SimpleNamespace(base=base, photos=photos, index=index, service=service)


def test_fuzz_every_endpoint_never_5xx(http: SimpleNamespace) -> None:
    """Every operation of the OpenAPI schema, FUZZ_EXAMPLES generated requests each (valid and
    invalid ones, from schemathesis's strategies), sent in-process through ASGI: none may get
    a 5xx, and no 2xx JSON may carry NaN or Infinity."""
    from hypothesis import given

    app = build_app(http.service, token=TOKEN, limits=Limits(max_body=1 << 20))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    counts: dict[str, int] = {}
    server_errors: list[str] = []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def one(case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            counts[operation.label] = counts.get(operation.label, 0) + 1
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                     f"{response.text[:200]}")
            if 200 <= response.status_code < 300 and "json" in response.headers.get("content-type", ""):
                assert "NaN" not in response.text and "Infinity" not in response.text

        one()
    print(f"fuzz: {sum(counts.values())} cases over {len(counts)} operations, {len(server_errors)} server errors")
    assert server_errors == [], server_errors[:5]
    assert len(counts) == len(operations)


def test_schema_valid_edge_values_get_answers_and_invalid_ones_4xx(http: SimpleNamespace) -> None:
    app = build_app(http.service, token=TOKEN)
    with running_server(app) as url:
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        hit = c.post("/api/search/text", json={"text": "a photo", "k": 1}).json()["hits"][0]
        shard = hit["id"].split(":")[0]
        for bad in (f"{shard}:١", f"{shard}:²", f"{shard}:0x1", f"{shard}: 1"):  # Unicode digits are no ids
            assert c.get(f"/api/items/{bad}").status_code == 404
            assert c.post("/api/search/similar", json={"id": bad}).status_code == 422
        big = 2**70
        for flt in ({"min_width": big}, {"min_height": -1}, {"after": big}, {"before": -big},
                    {"after": "99999-01-01"}, {"types": ["j" * 50]}, {"folder": "/a\u0000b"}):
            r = c.post("/api/search/text", json={"text": "x", "filter": flt})
            assert 400 <= r.status_code < 500, (flt, r.status_code, r.text)
        for flt in ({"min_width": 2**31 - 1}, {"after": -253_402_300_799}, {"before": 253_402_300_799},
                    {"after": "1969-12-31", "before": "2262-04-11"}):
            r = c.post("/api/search/text", json={"text": "x", "filter": flt})
            assert r.status_code == 200, (flt, r.text)
        for text in ("a\\ud800b", "\\u0000", "\\u0007bell"):  # JSON escapes: a lone surrogate, NUL, BEL
            h = {"Content-Type": "application/json"}
            assert c.post("/api/search/text", content=f'{{"text": "{text}"}}', headers=h).status_code == 422
            assert c.post("/api/embed/text", content=f'{{"texts": ["{text}"]}}', headers=h).status_code == 422
        r = c.post("/api/search/vectors", json={"vectors": [[1e300] * 32]})
        assert r.status_code == 422


def test_tokenless_server_refuses_foreign_hosts_and_cross_site_posts(http: SimpleNamespace) -> None:
    with running_server(build_app(http.service)) as url:
        port = url.rsplit(":", 1)[1]
        ok = httpx.get(url + "/api/info")
        assert ok.status_code == 200
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
            assert httpx.get(url + "/api/health", headers={"Host": host}).status_code == 200
        for host in (f"evil.example:{port}", "attacker.com", f"127.0.0.1.evil.com:{port}", ""):
            r = httpx.get(url + "/api/info", headers={"Host": host})
            assert r.status_code == 403, host
        form = {"captions": ["a dog"]}
        same = httpx.post(url + "/api/search/text", json={"text": "a dog"}, headers={"Origin": url})
        assert same.status_code == 200
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            assert httpx.post(url + "/api/match", data=form, headers=headers).status_code == 403
            assert httpx.post(url + "/api/search/text", json={"text": "a dog"}, headers=headers).status_code == 403
    with running_server(build_app(http.service, token="t")) as url:  # a token protects instead
        assert httpx.get(url + "/api/health", headers={"Host": "photos.example"}).status_code == 200


def test_image_and_thumbnail_serve_only_the_indexed_file(http: SimpleNamespace, tiny_model: Path,
                                                         tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(http.photos, photos)
    index = build_index(tiny_model, photos, tmp_path / "index")
    service = SearchService(ServiceConfig(index, device="cpu", use_gpu=False))
    secret = tmp_path / "secret.jpg"
    shutil.copy(next(photos.rglob("*.jpg")), secret)
    with running_server(build_app(service, token=TOKEN)) as url:
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        hits = c.post("/api/search/text", json={"text": "a photo", "k": 30}).json()["hits"]
        jpgs = [h for h in hits if h["path"].endswith(".jpg")]
        good, swapped, replaced, touched = jpgs[:4]
        assert c.get(good["image"]).status_code == 200 and c.get(good["thumbnail"]).status_code == 200
        assert c.get(good["image"]).content == Path(good["path"]).read_bytes()

        os.unlink(swapped["path"])  # a symlink to a file outside the indexed folder
        os.symlink(secret, swapped["path"])
        other = Path(replaced["path"])
        os.unlink(other)  # a symlink to another indexed photo: inside the folder, wrong content
        os.symlink(good["path"], other)
        for h in (swapped, replaced):
            assert c.get(h["image"]).status_code == 404 and c.get(h["thumbnail"]).status_code == 404

        t = Path(touched["path"])  # same bytes, new mtime: checked by content hash, still served
        os.utime(t, ns=(t.stat().st_atime_ns, t.stat().st_mtime_ns + 5 * 10**9))
        assert c.get(touched["image"]).status_code == 200
        data = bytearray(t.read_bytes())  # same size, new mtime, new bytes: refused
        data[-10] ^= 0xFF
        t.write_bytes(bytes(data))
        assert c.get(touched["image"]).status_code == 404

        os.unlink(good["path"])  # a FIFO where the photo was: refused, never opened for reading
        os.mkfifo(good["path"])
        assert c.get(good["image"]).status_code == 404 and c.get(good["thumbnail"], params={"size": 64}).status_code == 404
