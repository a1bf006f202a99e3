"""Filters from EXIF: camera make/model, lens, GPS within a radius or a box; stored by the indexer,
read as nulls from shards written before the columns existed, exposed in the CLI and the API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from llm2search.errors import InvalidQueryError
from llm2search.search.filters import SearchFilter, distance_km
from tests.cli_helpers import invoke, ok_json

# name: (make, model, lens, (lat, lon, alt) or None)
PHOTOS = {
    "paris_r5": ("Canon", "Canon EOS R5", "RF24-105mm F4 L IS USM", (48.8584, 2.2945, 35.0)),
    "versailles_r5": ("Canon", "Canon EOS R5", "RF15-35mm F2.8 L IS USM", (48.8049, 2.1204, 130.0)),
    "london_iphone": ("Apple", "iPhone 15 Pro", "iPhone 15 Pro back triple camera 6.765mm f/1.78", (51.5007, -0.1246, 20.0)),
    "fiji_z6": ("NIKON CORPORATION", "NIKON Z 6", "NIKKOR Z 24-70mm f/4 S", (-17.7134, 178.0650, 5.0)),
    "samoa_z6": ("NIKON CORPORATION", "NIKON Z 6", "NIKKOR Z 24-70mm f/4 S", (-13.7590, -172.1046, 2.0)),
    "plain": (None, None, None, None),
}


def _dms(x: float) -> tuple[float, float, float]:
    x = abs(x)
    d = int(x)
    m = int((x - d) * 60)
    return (float(d), float(m), round(((x - d) * 60 - m) * 60, 4))


def make_exif_photos(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    out = {}
    for name, (make, model, lens, gps) in PHOTOS.items():
        img = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)).resize((80, 60))
        exif = Image.Exif()
        if make:
            exif[271], exif[272] = make, model
            exif.get_ifd(0x8769)[0xA434] = lens
        if gps:
            g = exif.get_ifd(0x8825)
            g[1], g[2] = ("N" if gps[0] >= 0 else "S"), _dms(gps[0])
            g[3], g[4] = ("E" if gps[1] >= 0 else "W"), _dms(gps[1])
            g[5], g[6] = b"\x00", gps[2]
        path = folder / f"{name}.jpg"
        img.save(path, exif=exif)
        out[name] = path
    return out


@pytest.fixture(scope="module")
def exif_index(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    base = tmp_path_factory.mktemp("exif")
    photos = make_exif_photos(base / "photos")
    index = base / "index"
    assert ok_json("index", base / "photos", "--index", index, "--model", tiny_model, "--json",
                   "--workers", "0")["failed"] == 0
    return index, photos


def _names(index: Path, *flags: str) -> set[str]:
    hits = ok_json("query", "a photo", "--index", index, "--json", "-k", "50", *flags)
    return {Path(h["path"]).stem for h in hits}


def test_cli_filters_by_camera_lens_radius_and_box(exif_index: tuple[Path, dict[str, Path]]) -> None:
    index, _ = exif_index
    assert _names(index, "--camera", "canon r5") == {"paris_r5", "versailles_r5"}
    assert _names(index, "--camera", "iphone") == {"london_iphone"}
    assert _names(index, "--camera", "nikon", "--lens", "24-70") == {"fiji_z6", "samoa_z6"}
    assert _names(index, "--lens", "24-105") == {"paris_r5"}
    # Eiffel tower to Versailles is 14.6 km; to London 340 km.
    assert _names(index, "--near", "48.8584,2.2945,5") == {"paris_r5"}
    assert _names(index, "--near", "48.8584,2.2945,20") == {"paris_r5", "versailles_r5"}
    assert _names(index, "--near", "48.8584,2.2945,400") == {"paris_r5", "versailles_r5", "london_iphone"}
    assert _names(index, "--bbox", "48,-1,52,3") == {"paris_r5", "versailles_r5", "london_iphone"}
    # A box across the 180th meridian (west > east) holds Fiji and Samoa only.
    assert _names(index, "--bbox", "-20,170,-10,-170") == {"fiji_z6", "samoa_z6"}
    hit = ok_json("query", "a photo", "--index", index, "--json", "-k", "1", "--lens", "24-105")[0]
    assert hit["camera_make"] == "Canon" and hit["camera_model"] == "Canon EOS R5"
    assert hit["gps_lat"] == pytest.approx(48.8584, abs=1e-5) and hit["gps_lon"] == pytest.approx(2.2945, abs=1e-5)
    assert hit["gps_alt"] == pytest.approx(35.0)
    for bad in (["--near", "48,2"], ["--near", "91,0,5"], ["--bbox", "10,0,5,1"], ["--camera", " "]):
        result = invoke("query", "x", "--index", index, *bad)
        assert result.exit_code == 1 and result.stderr.startswith("error: "), bad
        assert len(result.stderr.strip().splitlines()) == 1


def test_haversine_against_known_distances() -> None:
    d = distance_km(np.array([48.8049, 51.5007]), np.array([2.1204, -0.1246]), 48.8584, 2.2945)
    assert d == pytest.approx([14.0, 340.4], abs=1.0)
    with pytest.raises(InvalidQueryError):
        SearchFilter(near=(0, 0, 0))


def test_shards_written_before_the_exif_columns_open_and_filter(tiny_model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An index whose first shard predates the EXIF columns: it opens, its rows read as nulls,
    filters run over both shards, and a compaction merges old and new rows into one schema."""
    import llm2search.store.shard as shard_module
    from llm2search.store.manifest import read_manifest
    from llm2search.store.shard import META_SCHEMA, read_shard_meta

    photos = make_exif_photos(tmp_path / "photos")
    old_schema = pa.schema([f for f in META_SCHEMA if f.name not in
                            ("camera_make", "camera_model", "lens", "gps_lat", "gps_lon", "gps_alt")])
    index = tmp_path / "index"
    (tmp_path / "first").mkdir()
    photos["paris_r5"].rename(tmp_path / "first" / "paris_r5.jpg")
    monkeypatch.setattr(shard_module, "META_SCHEMA", old_schema)
    ok_json("index", tmp_path / "first", "--index", index, "--model", tiny_model, "--json", "--workers", "0")
    monkeypatch.undo()
    old = read_manifest(index).shards[0]
    import pyarrow.parquet as pq

    assert "gps_lat" not in pq.read_schema(index / "shards" / old.name / "meta.parquet").names
    assert read_shard_meta(index, old, ["path", "gps_lat", "camera_model"]).column("gps_lat").null_count == 1

    ok_json("index", tmp_path / "photos", "--index", index, "--json", "--workers", "0")
    assert _names(index, "--camera", "canon") == {"versailles_r5"}  # the old shard's row has no EXIF
    assert len(_names(index)) == 6
    # --shard-size 8 makes both shards "small", so the run's compaction merges them.
    ok_json("index", tmp_path / "first", "--index", index, "--json", "--workers", "0", "--shard-size", "8")
    shards = read_manifest(index).shards
    assert len(shards) == 1
    merged = read_shard_meta(index, shards[0])
    assert merged.schema.names == META_SCHEMA.names and merged.num_rows == 6


def test_api_filter_schema_takes_camera_lens_near_and_box(exif_index: tuple[Path, dict[str, Path]]) -> None:
    from fastapi.testclient import TestClient

    from llm2search.serve.config import ServiceConfig
    from llm2search.serve.server import build_app
    from llm2search.serve.service import SearchService

    index, _ = exif_index
    # A tokenless server answers loopback Host names only (not TestClient's default "testserver").
    client = TestClient(build_app(SearchService(ServiceConfig(index, device="cpu", use_gpu=False))),
                        base_url="http://127.0.0.1")

    def names(flt: dict) -> set[str]:
        r = client.post("/api/search/text", json={"text": "a photo", "k": 50, "filter": flt})
        assert r.status_code == 200, r.text
        return {Path(h["path"]).stem for h in r.json()["hits"]}

    assert names({"camera": "Canon R5", "near": {"lat": 48.8584, "lon": 2.2945, "km": 5}}) == {"paris_r5"}
    assert names({"bbox": {"south": -20, "west": 170, "north": -10, "east": -170}}) == {"fiji_z6", "samoa_z6"}
    assert names({"lens": "15-35"}) == {"versailles_r5"}
    for bad in ({"near": {"lat": 95, "lon": 0, "km": 1}}, {"near": {"lat": 0, "lon": 0}},
                {"bbox": {"south": 10, "west": 0, "north": 5, "east": 1}}, {"camera": "x" * 201},
                {"near": {"lat": 0, "lon": 0, "km": 1, "extra": 1}}):
        r = client.post("/api/search/text", json={"text": "a photo", "filter": bad})
        assert r.status_code == 422, (bad, r.text)
    spec = client.get("/openapi.json").json()["components"]["schemas"]
    assert spec["NearIn"]["properties"]["lat"]["maximum"] == 90
    assert spec["FilterIn"]["properties"]["camera"]["anyOf"][0]["maxLength"] == 200
