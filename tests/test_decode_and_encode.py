"""Preprocessing against transformers' reference, bounded read-ahead, GPU-feeding fallbacks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm2search.indexer.decode import DecodeOptions, decode_stream
from llm2search.indexer.scan import FileEntry
from llm2search.models.preprocess import decode_image
from llm2search.models.spec import PreprocessConfig


def _photo(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(640, 480), (480, 900), (336, 336)])
def test_matches_clip_image_processor(size: tuple[int, int]) -> None:
    from transformers import CLIPImageProcessor

    cfg = PreprocessConfig(image_size=336)
    data = _photo(*size)
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ref = proc(images=Image.open(io.BytesIO(data)), return_tensors="np").pixel_values[0]
    ref255 = (ref * np.array(cfg.std)[:, None, None] + np.array(cfg.mean)[:, None, None]) * 255
    exact = decode_image(data, cfg, draft=False).pixels.transpose(2, 0, 1).astype(np.float64)
    assert np.abs(exact - ref255).max() < 0.51  # identical up to float rounding
    drafted = decode_image(data, cfg).pixels.transpose(2, 0, 1).astype(np.float64)
    assert np.abs(drafted - ref255).mean() < 1.0


def test_big_jpeg_is_draft_decoded_close_to_full_decode() -> None:
    cfg = PreprocessConfig(image_size=64)
    data = _photo(2000, 1500)
    full = decode_image(data, cfg, draft=False).pixels.astype(int)
    fast = decode_image(data, cfg).pixels.astype(int)
    assert np.abs(full - fast).mean() < 1.5


def test_decode_stream_reads_ahead_a_bounded_amount(tmp_path: Path) -> None:
    entries = []
    for i in range(200):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(_photo(40, 30, seed=i))
        entries.append(FileEntry(str(p), p.stat().st_size, p.stat().st_mtime_ns))
    pulled = 0

    def source():
        nonlocal pulled
        for e in entries:
            pulled += 1
            yield e

    stream = decode_stream(source(), DecodeOptions(PreprocessConfig(image_size=32)), workers=1, chunk=4, read_ahead=3)
    consumed = 0
    for _ in stream:
        consumed += 1
        assert pulled - consumed <= 1 * 3 * 4 + 4  # in-flight chunks + the one being refilled
    assert consumed == 200


def test_out_of_memory_halves_the_batch(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from llm2search.models.embedder import Embedder
    from llm2search.models.presets import resolve_model

    encoder = Embedder(resolve_model(tiny_model), "cpu").image_encoder
    pixels = np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    expected = encoder.encode(pixels)
    real = encoder._encode
    sizes = []

    def small_gpu(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(batch)

    monkeypatch.setattr(encoder, "_encode", small_gpu)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    np.testing.assert_allclose(encoder.encode(pixels), expected, atol=1e-5)
    assert max(s for s in sizes if s <= 3) <= 3 and sizes[0] == 10
