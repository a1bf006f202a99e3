"""Verified files: every file the manifest names is checked by `llm2search verify`; damage is
never served, never copied into a new shard, and `verify --repair` makes the index whole (the
dropped photos are re-embedded by the next run). Every damaged case is one line, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm2search.cli import app
from llm2search.search.searcher import SearchIndex
from llm2search.store.manifest import read_manifest
from llm2search.store.verify import verify_index
from tests.conftest import live_rows, make_photos, rewrite_photo

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()


@pytest.fixture(scope="module")
def pristine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An IVF-PQ index with tombstones and an error list: every kind of file the manifest names."""
    base = tmp_path_factory.mktemp("verify")
    folder, index = base / "photos", base / "index"
    make_photos(folder, 72)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    args = ["--index", str(index), "--model", str(tiny_model), "--device", "cpu", "--workers", "0", "-q"]
    assert runner.invoke(app, ["index", str(folder), *args, "--shard-size", "30", "--retrain"]).exit_code == 0
    for i, p in enumerate(sorted(folder.rglob("*.png"))[:3]):
        rewrite_photo(p, seed=50 + i)
    assert runner.invoke(app, ["index", str(folder), *args, "--shard-size", "30"]).exit_code == 0
    m = read_manifest(index)
    assert m.index_type == "ivfpq" and m.errors_file and any(s.tombstones for s in m.shards)
    return folder, index


def damaged_copy(pristine: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the index (its rows still name the pristine folder's photos)."""
    shutil.copytree(pristine[1], tmp_path / "index")
    return tmp_path / "index"


def target(index: Path, which: str) -> Path:
    m = read_manifest(index)
    shard = next(s for s in m.shards if s.tombstones) if which == "tombstones" else m.shards[0]
    if which == "trained":
        return index / m.trained["file"]
    if which == "errors":
        return index / m.errors_file
    name = shard.tombstones if which == "tombstones" else which
    return index / "shards" / shard.name / name


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) * 2 // 3] ^= 0x5A
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "missing":
        path.unlink()


FILES = ["vectors.npy", "meta.parquet", "meta.arrow", "index.faiss", "tombstones", "trained", "errors"]
HOWS = ["flip", "truncate", "empty", "missing"]


def one_line_error(result) -> str:
    """The command failed with exactly one `error: ...` line and no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("which", FILES)
def test_damage_is_detected_refused_and_repaired(which: str, how: str, pristine: tuple[Path, Path],
                                                 tiny_model: Path, tmp_path: Path) -> None:
    index = damaged_copy(pristine, tmp_path)
    before = sorted(p for p, _ in live_rows(index))
    path = target(index, which)
    damage(path, how)

    # verify names the file, exits 1 and says how to fix it.
    result = runner.invoke(app, ["verify", "--index", str(index)])
    line = one_line_error(result)
    assert "--repair" in line and path.name in result.stderr
    assert not verify_index(index).ok

    # Every reader command either answers (without NaN) or fails with one line.
    query = runner.invoke(app, ["query", "a photo", "--index", str(index), "--model", str(tiny_model),
                                "--device", "cpu", "--json", "-k", "80"])
    if query.exit_code:
        assert "verify" in one_line_error(query)
    else:
        assert "NaN" not in query.stdout
    info = runner.invoke(app, ["info", "--index", str(index), "--errors"])
    if info.exit_code:
        one_line_error(info)
    args = ["--index", str(index), "--model", str(tiny_model), "--device", "cpu", "--workers", "0", "-q"]
    early = runner.invoke(app, ["index", str(pristine[0]), *args, "--shard-size", "30"])
    if early.exit_code:
        assert "verify" in one_line_error(early)

    # repair, then a rerun re-embeds whatever was dropped: one live entry per photo again.
    repaired = runner.invoke(app, ["verify", "--index", str(index), "--repair"])
    assert repaired.exit_code == 0, repaired.stderr
    assert verify_index(index).ok
    rerun = runner.invoke(app, ["index", str(pristine[0]), *args, "--shard-size", "30"])
    assert rerun.exit_code == 0, rerun.stderr
    after = sorted(p for p, _ in live_rows(index))
    assert after == before
    assert verify_index(index).ok
    idx = SearchIndex(index, use_gpu=False)
    vec = np.zeros(idx.manifest.dim, dtype=np.float32)
    vec[0] = 1
    assert len(idx.search_vector(vec, k=10)) == 10


def test_a_flipped_vector_byte_is_never_served_nor_compacted(tiny_model: Path, tmp_path: Path) -> None:
    """The exact failure of issue 11: a flipped byte in vectors.npy made a NaN score, a server
    500, and was then compacted into a new shard with a fresh checksum."""
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 24)
    args = ["--index", str(index), "--model", str(tiny_model), "--device", "cpu", "--workers", "0", "-q"]
    assert runner.invoke(app, ["index", str(folder), *args, "--shard-size", "8", "--commit-seconds", "0"]).exit_code == 0
    m = read_manifest(index)
    assert len(m.shards) == 3
    victim = m.shards[0]
    path = index / "shards" / victim.name / "vectors.npy"
    raw = bytearray(path.read_bytes())
    header = len(raw) - victim.count * m.dim * 2
    raw[header + 1] = 0x7E  # high byte of the first float16: exponent all ones -> NaN
    raw[header] = 0x01
    path.write_bytes(bytes(raw))

    idx = SearchIndex(index, use_gpu=False)
    with pytest.warns(RuntimeWarning, match="verify"):
        hits = idx.search_vector(np.asarray(idx.vector_by_id(f"{m.shards[1].name}:0")), k=24)
    assert all(np.isfinite(h.score) for h in hits) and len(hits) == 23  # the damaged row left out
    idx.close()

    # A compaction (bigger --shard-size) must not copy the damaged shard's rows anywhere.
    result = runner.invoke(app, ["index", str(folder), *args, "--shard-size", "1000"])
    assert result.exit_code == 0, result.stderr
    assert f"warning: shard {victim.name} fails its check" in result.stderr
    after = read_manifest(index)
    assert victim in after.shards and len(after.shards) == 2  # the two intact shards merged
    assert not verify_index(index).ok  # still reported, never laundered into a fresh checksum
