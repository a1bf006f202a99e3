"""A corpus of hostile and unusual files: nothing crashes the run, every bad file is recorded
with its reason, every good file is indexed."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm2search.indexer import pipeline
from llm2search.indexer.pipeline import IndexingConfig, index_folder
from llm2search.search.info import index_errors
from llm2search.search.searcher import SearchIndex


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def build_corpus(root: Path) -> tuple[set[str], dict[str, str]]:
    """Returns (good file names, {bad file name: expected reason fragment})."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    good: set[str] = set()
    bad: dict[str, str] = {}

    photo.save(root / "normal.jpg", quality=90)
    good.add("normal.jpg")
    full = (root / "normal.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    bad["truncated.jpg"] = "truncated"
    (root / "zero.jpg").write_bytes(b"")
    bad["zero.jpg"] = "empty file"
    (root / "text.jpg").write_text("hello, I am not a picture\n")
    bad["text.jpg"] = "not a readable image"
    Image.new("1", (6000, 6000)).save(root / "bomb.png")  # 36 MP of zeros, a few KB on disk
    bad["bomb.png"] = "over the limit"
    _png_header_only(root / "huge.png", 200_000, 150_000)
    bad["huge.png"] = "over the limit"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one_pixel.png")
    good.add("one_pixel.png")
    Image.fromarray((rng.integers(0, 65535, (40, 50))).astype(np.uint16)).save(root / "sixteen_bit.png")
    good.add("sixteen_bit.png")
    import pillow_heif

    pillow_heif.register_heif_opener()
    photo.save(root / "iphone.heic")
    good.add("iphone.heic")
    photo.save(root / "modern.webp")
    good.add("modern.webp")
    photo.save(root / "old.bmp")
    good.add("old.bmp")
    photo.convert("CMYK").save(root / "cmyk.jpg")
    good.add("cmyk.jpg")
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette_transparent.png", transparency=0)
    good.add("palette_transparent.png")
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good.add("animated.gif")
    frames[0].save(root / "multipage.tiff", save_all=True, append_images=frames[1:])
    good.add("multipage.tiff")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    exif[306] = "2021:07:04 10:30:00"
    Image.new("RGB", (80, 40), (10, 200, 10)).save(root / "rotated.jpg", exif=exif)
    good.add("rotated.jpg")
    (root / "unreadable.jpg").write_bytes(full)
    os.chmod(root / "unreadable.jpg", 0)
    if os.geteuid() == 0:  # root reads anything: the file is simply good here
        good.add("unreadable.jpg")
    else:
        bad["unreadable.jpg"] = "cannot read file"
    os.symlink(root / "nowhere.jpg", root / "broken_link.jpg")
    bad["broken_link.jpg"] = "broken symlink"
    os.symlink(root / "loop_b.jpg", root / "loop_a.jpg")
    os.symlink(root / "loop_a.jpg", root / "loop_b.jpg")
    bad["loop_a.jpg"] = "symlink loop"
    bad["loop_b.jpg"] = "symlink loop"
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "back_to_top")  # a directory loop
    photo.save(os.path.join(os.fsencode(root), b"caf\xe9-latin1.jpg"))
    good.add("caf\\xe9-latin1.jpg")
    photo.save(root / "gone_soon.jpg")
    bad["gone_soon.jpg"] = "disappeared"
    return good, bad


def test_bad_file_corpus(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "corpus"
    good, bad = build_corpus(root)
    original = pipeline.decode_stream

    def delete_one_first(entries, *args, **kwargs):  # a file deleted after the scan saw it
        entries = list(entries)
        os.unlink(root / "gone_soon.jpg")
        return original(entries, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_stream", delete_one_first)
    index = tmp_path / "index"
    config = IndexingConfig(model=str(tiny_model), workers=1, progress=False, max_pixels=20_000_000)
    report = index_folder(root, index, config)

    searcher = SearchIndex(index)
    hits = searcher.search_vector(np.eye(searcher.manifest.dim, dtype=np.float32)[0], k=100)
    indexed = {Path(h.path).name for h in hits}
    assert indexed == good, (indexed ^ good)
    errors = {Path(e["path"]).name: e["reason"] for e in index_errors(index)}
    assert set(errors) == set(bad), (set(errors) ^ set(bad))
    for name, fragment in bad.items():
        assert fragment in errors[name], (name, errors[name])
    assert report.failed + report.scanned - report.new >= 0
    assert report.new == len(good)

    rotated = next(h for h in hits if h.path.endswith("rotated.jpg"))
    assert (rotated.width, rotated.height) == (40, 80)
    assert rotated.exif_time is not None
    odd = next(h for h in hits if "latin1" in h.path)
    assert "\\xe9" in odd.path

    # A rerun changes nothing, retries nothing, and forgets the file that is gone.
    monkeypatch.setattr(pipeline, "decode_stream", original)
    again = index_folder(root, index, config)
    assert again.embedded == 0 and again.new == 0 and again.unchanged == len(good)
    assert again.known_bad == len([n for n in bad if n not in ("gone_soon.jpg", "broken_link.jpg", "loop_a.jpg", "loop_b.jpg")])
    assert "gone_soon.jpg" not in {Path(e["path"]).name for e in index_errors(index)}


def test_info_errors_cli_lists_path_and_reason(tiny_model: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llm2search.cli import app

    root = tmp_path / "p"
    root.mkdir()
    (root / "bad.png").write_bytes(b"\x89PNG broken")
    Image.new("RGB", (20, 20)).save(root / "ok.png")
    index = tmp_path / "i"
    runner = CliRunner()
    assert runner.invoke(app, ["index", str(root), "--index", str(index), "--model", str(tiny_model), "-q"]).exit_code == 0
    out = runner.invoke(app, ["info", "--index", str(index), "--errors", "--json"])
    rows = json.loads(out.stdout)
    assert [(Path(r["path"]).name, "reason" in r) for r in rows] == [("bad.png", True)]
