"""Query options in the CLI: --negative and weighted text + image (the same vector the API's
combined query builds), and a text longer than the model's token limit: searched cut, with a
warning on the CLI and `truncated` in the API's JSON; one character limit for CLI and server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm2search.models.text_encoder import MAX_QUERY_CHARS
from llm2search.search.query import WeightedVector, combine
from llm2search.search.searcher import open_index
from tests.cli_helpers import invoke, ok_json
from tests.conftest import make_photos

LONG = "a red kite over a wide sandy beach at sunset with people walking dogs " * 28  # ~2000 chars


@pytest.fixture(scope="module")
def indexed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("queries")
    make_photos(base / "photos", 24, seed=9)
    ok_json("index", base / "photos", "--index", base / "index", "--model", tiny_model, "--json", "--workers", "0")
    return base / "index", base / "photos"


def _ids(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


def test_negative_and_weights_match_the_combined_vector(indexed: tuple[Path, Path]) -> None:
    index, photos = indexed
    idx = open_index(index, device="cpu")
    text, neg = "a bright photo", ["a dark photo", "blurry"]
    t, n1, n2 = idx.embedder.embed_texts([text, *neg])
    expected = idx.search_vector(combine([WeightedVector(t, 1.0), WeightedVector(n1, -0.7), WeightedVector(n2, -0.7)]), 8)
    hits = ok_json("query", text, "--index", index, "--json", "-k", "8", "--negative", neg[0], "--negative", neg[1],
                   "--negative-weight", "0.7")
    assert _ids(hits) == [h.id for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-6)
    plain = ok_json("query", text, "--index", index, "--json", "-k", "8")
    assert [h["score"] for h in plain] != [h["score"] for h in hits]

    image = sorted(photos.rglob("*.jpg"))[0]
    from llm2search.search.query import image_pixels

    v_img = idx.embedder.embed_pixels(image_pixels(image.read_bytes(), idx.embedder))[0]
    expected = idx.search_vector(combine([WeightedVector(v_img, 0.3), WeightedVector(t, 2.0)]), 5)
    hits = ok_json("query", text, "--image", image, "--image-weight", "0.3", "--text-weight", "2",
                   "--index", index, "--json", "-k", "5")
    assert _ids(hits) == [h.id for h in expected]
    result = invoke("query", text, "--index", index, "--text-weight", "-1")
    assert result.exit_code == 1 and "positive weight" in result.stderr


def test_long_query_is_cut_with_a_warning_and_one_limit_everywhere(indexed: tuple[Path, Path]) -> None:
    index, _ = indexed
    idx = open_index(index, device="cpu")
    limit = idx.embedder.token_limit
    encoder = idx.embedder.text_encoder
    assert len(encoder.l2v.tokenizer(LONG, add_special_tokens=False)["input_ids"]) > limit
    result = invoke("query", LONG, "--index", index, "--json", "-k", "3")
    assert result.exit_code == 0, result.stderr
    assert f"{limit}-token limit" in result.stderr and result.stderr.startswith("warning: ")
    cut, was_cut = encoder.prepare(LONG)
    assert was_cut and len(encoder.l2v.tokenizer(cut, add_special_tokens=False)["input_ids"]) <= limit
    # The cut text is what was searched: the same hits as searching the cut text itself.
    assert _ids(ok_json("query", cut, "--index", index, "--json", "-k", "3")) == _ids(
        ok_json("query", LONG, "--index", index, "--json", "-k", "3"))
    short = invoke("query", "a red kite", "--index", index, "--json", "-k", "3")
    assert short.exit_code == 0 and "warning" not in short.stderr
    too_long = invoke("query", "x" * (MAX_QUERY_CHARS + 1), "--index", index)
    assert too_long.exit_code == 1 and f"{MAX_QUERY_CHARS:,}" in too_long.stderr

    from fastapi.testclient import TestClient

    from llm2search.serve.config import Limits, ServiceConfig
    from llm2search.serve.server import build_app
    from llm2search.serve.service import SearchService

    assert Limits().max_text == MAX_QUERY_CHARS
    # A tokenless server answers loopback Host names only (not TestClient's default "testserver").
    client = TestClient(build_app(SearchService(ServiceConfig(index, device="cpu", use_gpu=False))),
                        base_url="http://127.0.0.1")
    body = client.post("/api/search/text", json={"text": LONG, "k": 3}).json()
    assert body["truncated"] is True and body["truncated_texts"] == 1 and body["token_limit"] == limit
    body = client.post("/api/query", json={"text": "a red kite", "negative": [LONG], "k": 3}).json()
    assert body["truncated"] is True and body["truncated_texts"] == 1
    body = client.post("/api/search/text", json={"text": "a red kite", "k": 3}).json()
    assert body["truncated"] is False
    assert client.get("/api/info").json()["limits"]["query_tokens"] == limit
    assert client.post("/api/search/text", json={"text": "x" * (MAX_QUERY_CHARS + 1)}).status_code == 422
    assert np.isfinite(body["hits"][0]["score"])
