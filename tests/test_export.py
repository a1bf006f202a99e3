"""`llm2search export`: one Parquet file of the live photos, metadata plus vectors as a fixed-size
list, read back with pyarrow and DuckDB and checked against the store row by row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.cli_helpers import invoke, ok_json
from tests.conftest import live_rows, make_photos


def test_export_live_photos_with_vectors_readable_by_pyarrow_and_duckdb(tiny_model: Path, tmp_path: Path) -> None:
    import duckdb

    photos, index = tmp_path / "photos", tmp_path / "index"
    files = make_photos(photos, 12, seed=2)
    ok_json("index", photos, "--index", index, "--model", tiny_model, "--json", "--workers", "0")
    for f in files[:3]:  # tombstoned, not yet compacted: must not be exported
        f.unlink()
    assert ok_json("index", photos, "--index", index, "--json", "--workers", "0", "--shard-size", "1")["deleted"] == 3
    expected = dict(live_rows(index))
    assert len(expected) == 9

    out = tmp_path / "photos.parquet"
    report = ok_json("export", out, "--index", index, "--json")
    assert report["rows"] == 9 and report["dim"] == 32 and report["vectors"] == "float32"
    table = pq.read_table(out)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert "deleted" not in table.column_names and table.num_rows == 9
    got = dict(zip(table.column("path").to_pylist(), table.column("vector").to_pylist()))
    assert got.keys() == expected.keys()
    for path, vector in got.items():
        assert np.array_equal(np.asarray(vector, dtype=np.float32), expected[path]), path
    meta = json.loads(pq.read_schema(out).metadata[b"llm2search"])
    assert meta["dim"] == 32 and meta["model"]["name"] == "tiny-random"

    con = duckdb.connect()
    rows = con.execute(f"SELECT path, width, height, format, vector FROM '{out}' ORDER BY path").fetchall()
    assert [r[0] for r in rows] == sorted(expected)
    assert all(r[1] == 96 and r[2] == 72 and r[3] in ("JPEG", "PNG") for r in rows)
    assert np.array_equal(np.asarray(rows[0][4], dtype=np.float32), expected[rows[0][0]])
    # Nearest neighbour of a photo by cosine in SQL is the photo itself (unit vectors).
    first = rows[0][0]
    best = con.execute(f"""SELECT b.path FROM '{out}' a, '{out}' b WHERE a.path = ?
                           ORDER BY list_inner_product(a.vector, b.vector) DESC LIMIT 1""", [first]).fetchone()
    assert best[0] == first

    # --folder and float16: only photos under the folder, half-size vectors, same values.
    sub = tmp_path / "sub.parquet"
    report = ok_json("export", sub, "--index", index, "--json", "--folder", photos / "sub", "--vectors", "float16")
    half = pq.read_table(sub)
    assert half.schema.field("vector").type == pa.list_(pa.float16(), 32)
    assert report["rows"] == half.num_rows == sum(1 for p in expected if "/sub/" in p) > 0
    for path, vector in zip(half.column("path").to_pylist(), half.column("vector").to_numpy(zero_copy_only=False)):
        assert np.array_equal(np.asarray(vector, dtype=np.float32), expected[path])
    assert con.execute(f"SELECT count(*) FROM '{sub}'").fetchone()[0] == report["rows"]

    for bad in (["--format", "csv"], ["--vectors", "int8"]):
        result = invoke("export", tmp_path / "x.parquet", "--index", index, *bad)
        assert result.exit_code == 1 and result.stderr.startswith("error: ")
    result = invoke("export", tmp_path, "--index", index)
    assert result.exit_code == 1 and "is a folder" in result.stderr
    assert not list(tmp_path.glob(".*.tmp-*"))
