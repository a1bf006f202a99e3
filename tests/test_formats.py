"""AVIF, JPEG XL, MPO and camera RAW (DNG, CR2, NEF, ARW) indexed end to end, from files made here.
A RAW's vector must be exactly that of its embedded preview saved alone: the preview, not the
RAW's tiny thumbnail or its sensor data, is what gets indexed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm2search.models.preprocess import decode_image
from llm2search.models.raw import read_raw
from llm2search.models.spec import PreprocessConfig
from tests import raw_samples
from tests.cli_helpers import ok_json
from tests.conftest import live_rows


def _picture(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(3, 4, 3)).astype(np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)


def _write_library(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, format the index must record)."""
    folder.mkdir(parents=True)
    files: dict[str, tuple[Path, str]] = {}
    _picture(1).save(folder / "a.avif", "AVIF")
    files["avif"] = (folder / "a.avif", "AVIF")
    _picture(2).save(folder / "b.jxl", "JXL")
    files["jxl"] = (folder / "b.jxl", "JXL")
    _picture(3).save(folder / "c.mpo", "MPO", save_all=True, append_images=[_picture(4)])
    files["mpo"] = (folder / "c.mpo", "MPO")
    for i, (ext, make) in enumerate([("dng", raw_samples.dng), ("cr2", raw_samples.cr2),
                                     ("nef", raw_samples.nef), ("arw", raw_samples.arw)]):
        preview = raw_samples.preview_jpeg(10 + i)
        (folder / f"raw_{ext}.{ext}").write_bytes(make(preview, seed=i))
        (folder / f"raw_{ext}_preview.jpg").write_bytes(preview)
        files[ext] = (folder / f"raw_{ext}.{ext}", ext.upper())
    (folder / "sensor_only.dng").write_bytes(raw_samples.dng(None, seed=7))  # demosaiced by rawpy
    files["dng-sensor"] = (folder / "sensor_only.dng", "DNG")
    return files


def test_every_format_is_indexed_and_raw_uses_its_preview(tiny_model: Path, tmp_path: Path) -> None:
    files = _write_library(tmp_path / "lib")
    index = tmp_path / "index"
    report = ok_json("index", tmp_path / "lib", "--index", index, "--model", tiny_model, "--json", "--workers", "1")
    assert report["failed"] == 0 and report["new"] == len(files) + 4  # + the four preview JPEGs
    vectors = dict(live_rows(index))
    hits = ok_json("query", "a photo", "--index", index, "--json", "-k", "100")
    formats = {h["path"]: h["format"] for h in hits}
    for name, (path, fmt) in files.items():
        assert formats[str(path)] == fmt, name
    for ext in ("dng", "cr2", "nef", "arw"):
        raw = vectors[str(tmp_path / "lib" / f"raw_{ext}.{ext}")]
        preview = vectors[str(tmp_path / "lib" / f"raw_{ext}_preview.jpg")]
        assert np.array_equal(raw, preview), ext
    # Filter by type: --type raw is every RAW; --type avif only the AVIF.
    raws = ok_json("query", "a photo", "--index", index, "--json", "-k", "100", "--type", "raw")
    assert {h["format"] for h in raws} == {"DNG", "CR2", "NEF", "ARW"} and len(raws) == 5
    avif = ok_json("query", "a photo", "--index", index, "--json", "-k", "100", "--type", "avif")
    assert [h["path"] for h in avif] == [str(files["avif"][0])]
    # The RAW's camera EXIF comes from the container.
    by_path = {h["path"]: h for h in hits}
    assert by_path[str(files["nef"][0])]["camera_model"] == "NIKON Z 6"
    assert by_path[str(files["cr2"][0])]["lens"] == "EF24-70mm f/2.8L II USM"


def test_raw_preview_is_the_largest_decodable_jpeg_with_the_raw_orientation() -> None:
    cfg = PreprocessConfig(image_size=64)
    preview = raw_samples.preview_jpeg(5)
    nef = raw_samples.nef(preview, orientation=6)  # rotated 90° clockwise by the camera
    assert read_raw(nef).jpeg == preview  # not the 160x120 RGB thumbnail of IFD0
    decoded = decode_image(nef, cfg)
    assert (decoded.width, decoded.height) == (320, 480)
    rotated = Image.open(io.BytesIO(preview)).transpose(Image.Transpose.ROTATE_270)
    out = io.BytesIO()
    rotated.save(out, "PNG")
    expected = decode_image(out.getvalue(), cfg, draft=False)
    # Same picture; the JPEG draft decode of the RAW path differs from a PNG by rounding only.
    assert np.abs(decoded.pixels.astype(int) - expected.pixels.astype(int)).mean() < 3
    cr2 = raw_samples.cr2(preview)
    assert read_raw(cr2).jpeg == preview  # the lossless sensor JPEG of IFD3 is never taken


def test_a_raw_without_preview_or_rawpy_is_recorded_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from llm2search.models.preprocess import ImageDecodeError

    real_import = builtins.__import__

    def no_rawpy(name, *args, **kwargs):
        if name == "rawpy":
            raise ImportError("no rawpy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rawpy)
    with pytest.raises(ImageDecodeError, match="install rawpy"):
        decode_image(raw_samples.dng(None), PreprocessConfig(image_size=64))
