"""`llm2search serve --ray` on a local Ray cluster (fractional CPUs, started and shut down here):
the same HTTP API as `llm2search serve`, the same hits in the same order as SearchIndex on the
same index split into 2 shard groups (text, image, filtered, batch queries), a killed group
replica replaced while requests keep succeeding, and an index update that no request sees
half of."""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.search.filters import SearchFilter
from llm2search.search.searcher import SearchIndex
from llm2search.serve.config import Limits, RayServeConfig, ServerConfig, ServiceConfig
from llm2search.serve.server import build_app
from llm2search.serve.service import SearchService
from llm2search.serve.shard_groups import assign_groups
from llm2search.store.readers import live_readers
from llm2search.store.vector_index import IndexConfig
from llm2search.store.writer import IndexWriter
from tests.conftest import make_photos
from tests.serving import running_server

TOKEN = "ray-token"
# Few lists probed and a shallow re-rank (2 x k): each group's own best candidates by PQ
# estimate are then not its part of the global best, the case the router's merge must get right.
SEARCH = IndexConfig(nprobe=1, rerank_factor=2)
BUILD = IndexConfig(ivf_threshold=60, nlist=2, ivf_shard_rows=20)
TEXTS = ["a red circle", "两个蓝色的方块", "a photo"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    import ray
    from ray import serve

    from llm2search.serve import ray_app

    base = tmp_path_factory.mktemp("ray")
    photos = base / "photos"
    make_photos(photos, 76)
    for i in range(6):  # duplicates: equal vectors, so equal scores that must break the same way
        src = sorted(photos.rglob("*.jpg"))[i]
        shutil.copy(src, photos / f"copy_{i}.jpg")
    index = base / "index"
    report = index_folder(photos, index, IndexingConfig(model=str(tiny_model), device="cpu", workers=0,
                                                        progress=False, shard_size=20, index=BUILD))
    assert report.failed == 0
    one = SearchIndex(index, config=SEARCH, use_gpu=False, device="cpu")
    assert one.manifest.index_type == "ivfpq" and len(one.shards) >= 3, one.manifest.shards
    service = ServiceConfig(index, device="cpu", use_gpu=False, reload_seconds=0.2, search=SEARCH)
    port = _free_port()
    server = ServerConfig(service, port=port, token=TOKEN, limits=Limits(max_body=4 << 20))
    config = RayServeConfig(server, groups=2, group_replicas=2, group_cpus=0.25, router_cpus=0.5,
                            encoder_cpus=0.5, encoder_gpus=0, idle_close_s=1.0)
    # Logical CPUs for the fractional reservations (2 in all); no idle workers started ahead.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False})
    try:
        ray_app.deploy(config)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=60)
        local = SearchService(service)
        with running_server(build_app(local, TOKEN, server.limits)) as local_url:
            local_client = httpx.Client(base_url=local_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
            yield SimpleNamespace(index=index, one=one, client=client, local=local_client, photos=photos,
                                  ray=ray, config=config)
            local_client.close()
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def jpeg(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def same(hits: list[dict], expected: list) -> None:
    """HTTP hits equal to SearchIndex hits: ids, ranks, scores (float32 as JSON) and paths."""
    assert [(h["id"], h["rank"], h["path"]) for h in hits] == [(e.id, e.rank, e.path) for e in expected]
    assert [np.float32(h["score"]) for h in hits] == [np.float32(e.score) for e in expected]


def vector_of(s: SimpleNamespace, text: str) -> np.ndarray:
    return np.asarray(ok(s.client.post("/api/embed/text", json={"texts": [text]}))["vectors"][0], dtype=np.float32)


def test_the_groups_split_the_shards(cluster: SimpleNamespace) -> None:
    groups = assign_groups(cluster.one.manifest, 2)
    assert all(groups) and sorted(i for g in groups for i in g) == list(range(len(cluster.one.shards)))


def _groups_own_top_k_would_differ(one: SearchIndex, queries: np.ndarray, k: int) -> bool:
    """Whether groups returning only their own exact top-k (the trap) would answer otherwise
    than one host on these queries: then the equality checked here can fail."""
    from llm2search.search.merge import merge_candidates, merge_ranked, top_exact
    from llm2search.serve.shard_groups import GroupView

    views = [GroupView(one.dir, one.manifest, g, SEARCH, False) for g in assign_groups(one.manifest, 2)]
    try:
        parts = [v.candidates(queries, k, one.coarse(queries))[0] for v in views]
    finally:
        for v in views:
            v.close()
    trap, right = merge_ranked([top_exact(p, k) for p in parts], k), merge_candidates(parts, one.rerank_depth(k), k)
    return not (np.array_equal(trap.rows, right.rows) and np.array_equal(trap.owners, right.owners))


def test_same_hits_in_the_same_order_as_one_host(cluster: SimpleNamespace) -> None:
    s, one = cluster, cluster.one
    for text in TEXTS:
        v = vector_of(s, text)
        for k, filt in [(5, {}), (1, {}), (30, {}), (8, {"folder": str(s.photos / "sub")}),
                        (6, {"types": ["png"], "sort": "date"}), (10, {"min_score": -0.2})]:
            body = {"text": text, "k": k, **({"filter": filt} if filt else {})}
            hits = ok(s.client.post("/api/search/text", json=body))["hits"]
            flt = SearchFilter(folder=filt.get("folder"), types=tuple(filt.get("types", ())),
                               sort=filt.get("sort", "score"), min_score=filt.get("min_score"))
            same(hits, one.search_vectors(v[None], k, flt)[0])
    # image queries: the upload's vector (embedded by the Ray app's encoder) searched by one host
    for path in sorted(s.photos.rglob("*.jpg"))[:3]:
        data = jpeg(path)
        v = np.asarray(ok(s.client.post("/api/embed/image", files={"image": ("q.jpg", data, "image/jpeg")}))
                       ["vectors"][0], dtype=np.float32)
        hits = ok(s.client.post("/api/search/image", files={"image": ("q.jpg", data, "image/jpeg")},
                                data={"k": "7"}))["hits"]
        same(hits, one.search_vectors(v[None], 7)[0])
    # batch: stored vectors of duplicated photos (ties) and random directions, filtered and not
    ids = [h.id for h in one.search_vectors(vector_of(s, "a photo")[None], 40)[0]]
    stored = np.stack([one.vector_by_id(i) for i in ids[:6]])
    noise = np.random.default_rng(0).standard_normal((6, stored.shape[1])).astype(np.float32)
    batch = np.concatenate([stored, noise / np.linalg.norm(noise, axis=1, keepdims=True)])
    for filt, flt in [({}, SearchFilter()), ({"types": ["jpg"]}, SearchFilter(types=("jpg",)))]:
        body = {"vectors": batch.tolist(), "k": 9, **({"filter": filt} if filt else {})}
        results = ok(s.client.post("/api/search/vectors", json=body))["results"]
        for got, expected in zip(results, one.search_vectors(batch, 9, flt)):
            same(got["hits"], expected)
    assert _groups_own_top_k_would_differ(one, batch, 9)


def test_the_same_api_as_llm2search_serve(cluster: SimpleNamespace) -> None:
    """Routes, answers and errors of the Ray app and of the single-host server side by side."""
    s = cluster
    hit = ok(s.local.post("/api/search/text", json={"text": "a photo", "k": 3}))["hits"][0]
    requests = [
        ("GET", "/api/health", {}), ("GET", f"/api/items/{hit['id']}", {}),
        ("POST", "/api/search/similar", {"json": {"id": hit["id"], "k": 5}}),
        ("POST", "/api/search/vectors", {"json": {"vectors": [s.one.vector_by_id(hit["id"]).tolist()], "k": 4}}),
        ("GET", "/api/items/nope:1", {}), ("GET", "/api/items/zzz", {}),
        ("POST", "/api/search/text", {"json": {"text": "", "k": 3}}),
        ("POST", "/api/search/text", {"json": {"text": "x", "k": 0}}),
        ("POST", "/api/search/vectors", {"json": {"vectors": [[0.1, 0.2]], "k": 3}}),
        ("POST", "/api/search/image", {"files": {"image": ("a.png", b"not an image", "image/png")}}),
    ]
    for method, path, kwargs in requests:
        a, b = s.client.request(method, path, **kwargs), s.local.request(method, path, **kwargs)
        assert a.status_code == b.status_code, (path, a.text, b.text)
        ja, jb = a.json(), b.json()
        for j in (ja, jb):
            j.pop("took_ms", None)
            for r in j.get("results", []):
                r.pop("took_ms", None)
        assert ja == jb, path
    thumb = f"/api/items/{hit['id']}/thumbnail"
    assert s.client.get(thumb).content == s.local.get(thumb).content
    assert s.client.get("/api/info").json()["count"] == s.one.count
    assert httpx.get(str(s.client.base_url) + "/api/info").status_code == 401
    assert set(s.client.get("/openapi.json").json()["paths"]) == set(s.local.get("/openapi.json").json()["paths"])


def _replicas(ray, deployment: str) -> list[str]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in names if a["name"].startswith("SERVE_REPLICA::")
                  and f"#{deployment}#" in a["name"])


def test_a_killed_group_replica_is_replaced_and_requests_keep_succeeding(cluster: SimpleNamespace) -> None:
    s, ray = cluster, cluster.ray
    before = _replicas(ray, "group-0")
    assert len(before) == 2
    v = vector_of(s, "a red circle")
    expected = [h.id for h in s.one.search_vectors(v[None], 5)[0]]
    failures, answers, stop = [], [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = s.client.post("/api/search/vectors", json={"vectors": [v.tolist()], "k": 5})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                answers.append([h["id"] for h in r.json()["results"][0]["hits"]])

    thread = threading.Thread(target=load)
    thread.start()
    try:
        while len(answers) < 3:
            time.sleep(0.05)
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Serve starts a replacement replica
            now = _replicas(ray, "group-0")
            if len(now) == 2 and before[0] not in now:
                break
            time.sleep(0.2)
        served_after = len(answers)
        while len(answers) < served_after + 5:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    now = _replicas(ray, "group-0")
    assert len(now) == 2 and before[0] not in now, now
    assert failures == [] and all(a == expected for a in answers) and len(answers) >= 8


def test_an_index_update_is_never_seen_half_applied(cluster: SimpleNamespace) -> None:
    """Rows deleted in shards of both groups in one commit: every answer during the switch is
    the old version's or the new version's, never a mix; then the old version is released."""
    s = cluster
    old = s.one
    groups = assign_groups(old.manifest, 2)
    group_of = {old.shards[i].info.name: g for g, members in enumerate(groups) for i in members}
    ids = [h.id for h in old.search_vectors(vector_of(s, "a photo")[None], 12)[0]]
    queries = np.stack([old.vector_by_id(i) for i in ids])
    before = [[h.id for h in hits] for hits in old.search_vectors(queries, 4)]
    victims = {}  # a hit of this batch from each group: deleted in one commit
    for hits in old.search_vectors(queries, 4):
        for h in hits:
            victims.setdefault(group_of[h.shard], h)
    assert set(victims) == {0, 1}
    with IndexWriter(s.index, old.manifest.model, old.manifest.dim, BUILD) as writer:
        writer.commit(deletions={h.shard: np.array([h.row]) for h in victims.values()})
    new = SearchIndex(s.index, config=SEARCH, use_gpu=False)
    after = [[h.id for h in hits] for hits in new.search_vectors(queries, 4)]
    gone = {h.id for h in victims.values()}
    assert all(not set(hits) & gone for hits in after) and before != after
    # A mix (group 0 answering from the old version, group 1 from the new) would be caught:
    assert _mixed(old, new, groups, queries, 4) not in (before, after)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        results = ok(s.client.post("/api/search/vectors", json={"vectors": queries.tolist(), "k": 4}))["results"]
        answer = [[h["id"] for h in r["hits"]] for r in results]
        assert answer in (before, after), answer  # never group 0 on one version, group 1 on the other
        seen.append(answer == after)
        if seen[-1] and seen.count(True) >= 3:
            break
        time.sleep(0.05)
    assert seen[-1], "the Ray app never moved to the new version"
    # The router and every group replica let go of the old version (their leases), those
    # replicas that saw no request since too (they close a version that is idle and not current).
    while time.monotonic() < deadline and not _old_released(s, old):
        time.sleep(0.2)
    assert _old_released(s, old)
    new.close()


def _mixed(old: SearchIndex, new: SearchIndex, groups: tuple, queries: np.ndarray, k: int) -> list[list[str]]:
    """The batch answer if group 0 answered from `old` and group 1 from `new`."""
    from llm2search.search.merge import merge_candidates
    from llm2search.serve.shard_groups import GroupView

    views = [GroupView(old.dir, old.manifest, groups[0], SEARCH, False),
             GroupView(new.dir, new.manifest, groups[1], SEARCH, False)]
    try:
        ranked = merge_candidates([v.candidates(queries, k, old.coarse(queries))[0] for v in views], old.rerank_depth(k), k)
    finally:
        for v in views:
            v.close()
    names = [shard.name for shard in old.manifest.shards]
    return [[f"{names[o]}:{r}" for o, r, x in zip(owners, rows, scores) if r >= 0 and np.isfinite(x)]
            for owners, rows, scores in zip(ranked.owners, ranked.rows, ranked.scores)]


def _old_released(s: SimpleNamespace, old: SearchIndex) -> bool:
    """Only this test process's own SearchIndex still holds the old generation."""
    import os

    holders = [r for r in live_readers(s.index) if r["generation"] == old.generation]
    return all(r["pid"] == os.getpid() for r in holders)


def test_deploy_refuses_more_cpus_than_the_cluster_has(cluster: SimpleNamespace) -> None:
    from dataclasses import replace

    from llm2search.errors import Llm2SearchError
    from llm2search.serve import ray_app

    with pytest.raises(Llm2SearchError, match="reserves 201 CPUs and the Ray cluster has 2"):
        ray_app.deploy(replace(cluster.config, group_cpus=50.0))


# -- the command line, without starting Ray ------------------------------------------------------
def test_serve_ray_command_line_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from typer.testing import CliRunner

    import llm2search.serve

    from llm2search.cli import app
    from llm2search.cli.common import bare_ray_means_auto

    assert bare_ray_means_auto(["serve", "--ray"]) == ["serve", "--ray", "auto"]
    assert bare_ray_means_auto(["serve", "--ray", "--port", "9"]) == ["serve", "--ray", "auto", "--port", "9"]
    assert bare_ray_means_auto(["serve", "--ray", "10.0.0.5:6379"]) == ["serve", "--ray", "10.0.0.5:6379"]
    runner = CliRunner()
    missing = runner.invoke(app, ["serve", "--ray", "local", "--index", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "error: no index" in missing.output.lower(), missing.output
    assert len(missing.output.strip().splitlines()) == 1
    # Without the cluster extra: one line naming it (ray made unimportable for this call).
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "llm2search.serve.ray_app", raising=False)
    monkeypatch.delattr(llm2search.serve, "ray_app", raising=False)
    no_ray = runner.invoke(app, ["serve", "--ray", "auto", "--index", str(tmp_path)])
    assert no_ray.exit_code == 1, no_ray.output
    assert no_ray.output.strip() == ("error: --ray needs the 'cluster' extra (ray is missing): "
                                     "pip install 'llm2search[cluster]'")
