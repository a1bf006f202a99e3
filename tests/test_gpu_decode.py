"""GPU JPEG decoding (models/gpu_preprocess.py, indexer/gpu_decode.py) on the CPU: the torch
resize/crop/orientation against the CPU preprocessing, and an indexing run with the batch decoder
injected (PIL standing in for nvJPEG, failing a whole batch on a bad file as nvJPEG does)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llm2search.models.gpu_preprocess import crops_from_jpegs, jpeg_header
from llm2search.models.preprocess import decode_image
from llm2search.models.presets import CLIP_336

ROOT = Path(__file__).resolve().parent.parent


def _photo(seed: int, size: tuple[int, int]) -> bytes:
    sys.path.insert(0, str(ROOT / "bench"))
    from preprocess import make_photo  # the photo-like JPEGs bench/preprocess.py measures on

    return make_photo(seed, size)


def _with_orientation(data: bytes, orientation: int) -> bytes:
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


class PilBatchDecoder:
    """Stands in for nvJPEG: a batch of JPEG bytes to (3, H, W) uint8 tensors, as stored (no
    EXIF rotation); one undecodable file fails the whole batch call."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, datas):
        import torch

        self.batches.append(len(datas))
        out = []
        for d in datas:
            try:
                img = Image.open(io.BytesIO(d))
                img.load()
            except OSError as e:
                raise RuntimeError(f"nvjpeg: {e}") from e
            out.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous())
        return out


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _resaved(data: bytes) -> bytes:
    out = io.BytesIO()
    img = Image.open(io.BytesIO(data))
    img.save(out, "JPEG", quality=95, exif=img.getexif())
    return out.getvalue()


def test_torch_crop_matches_clip_preprocessing_within_bench_tolerance() -> None:
    """bench/preprocess.py's yardstick: the difference to transformers' CLIPImageProcessor must
    stay under what re-saving the photo as a quality-95 JPEG makes (it applies it to the CPU
    path's draft decoding the same way)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from preprocess import clip_processor

    clip = clip_processor()
    decoder = PilBatchDecoder()
    photos = [_photo(0, (1200, 900)), _photo(1, (900, 1200)), _photo(2, (4000, 3000))]  # the last: 12 MP
    crops = crops_from_jpegs(photos, [jpeg_header(p, 10**9) for p in photos], CLIP_336, decoder)
    assert decoder.batches == [3]  # one batch call
    for data, crop in zip(photos, crops):
        gpu = crop.numpy()
        assert gpu.shape == (336, 336, 3) and gpu.dtype == np.uint8
        reference = clip(data)
        assert _mean_diff(gpu, reference) <= _mean_diff(clip(_resaved(data)), reference)


def test_torch_crop_turns_photos_as_the_cpu_path_does() -> None:
    photos = [_with_orientation(_photo(3, (1200, 800)), o) for o in range(1, 9)]
    headers = [jpeg_header(p, 10**9) for p in photos]
    assert [h.orientation for h in headers] == list(range(1, 9))
    for data, crop in zip(photos, crops_from_jpegs(photos, headers, CLIP_336, PilBatchDecoder())):
        cpu = decode_image(data, CLIP_336).pixels  # PIL's exif_transpose, then the crop
        assert _mean_diff(crop.numpy(), cpu) <= _mean_diff(decode_image(_resaved(data), CLIP_336).pixels, cpu)
    # Orientations 5-8 turn the 1200x800 photo upright: shown 800 wide, 1200 high.
    assert [h.display_size for h in headers] == [(1200, 800)] * 4 + [(800, 1200)] * 4


def test_files_the_gpu_cannot_take_are_left_to_the_cpu_path() -> None:
    png = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(png, "PNG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 50, 100, 0)).save(cmyk, "JPEG")
    big = _photo(4, (400, 300))
    assert jpeg_header(png.getvalue(), 10**9) is None
    assert jpeg_header(cmyk.getvalue(), 10**9) is None
    assert jpeg_header(big, 400 * 300 - 1) is None  # over --max-pixels: the CPU path says so
    assert jpeg_header(b"\xff\xd8\xff\xe0 not really a jpeg", 10**9) is None
    assert jpeg_header(big, 10**9) is not None


def test_indexing_with_gpu_jpeg_decoding_matches_the_cpu_run(tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.indexer import pipeline
    from llm2search.indexer.pipeline import IndexingConfig, index_folder
    from llm2search.search.info import index_errors
    from llm2search.search.searcher import SearchIndex

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.jpg").write_bytes(_photo(10 + i, (320 + 16 * i, 240)))
    (folder / "turned.jpg").write_bytes(_with_orientation(_photo(20, (300, 200)), 8))
    Image.new("RGB", (64, 48), "blue").save(folder / "flat.png")
    Image.new("CMYK", (64, 48), (10, 200, 30, 0)).save(folder / "print.jpg")
    (folder / "cut.jpg").write_bytes(_photo(21, (300, 200))[:900])  # truncated: nvJPEG rejects it

    def run(index: Path, decoder) -> dict:
        monkeypatch.setattr(pipeline, "gpu_possible", lambda requested: True)  # as on a GPU host
        monkeypatch.setattr(pipeline, "decoder_for", lambda device: decoder)
        report = index_folder(folder, index, IndexingConfig(model=str(tiny_model), workers=0, progress=False,
                                                            batch_size=4))
        searcher = SearchIndex(index, use_gpu=False, embedder=object())
        rows = {}
        for shard in searcher.shards:
            meta = shard.meta().to_pylist()
            for r, m in enumerate(meta):
                if not shard.dead[r]:
                    rows[Path(m["path"]).name] = (m["width"], m["height"], np.asarray(shard.vectors[r], np.float32))
        errors = {Path(e["path"]).name for e in index_errors(index)}
        return {"report": report, "rows": rows, "errors": errors}

    decoder = PilBatchDecoder()
    on_gpu = run(tmp_path / "gpu", decoder)
    on_cpu = run(tmp_path / "cpu", None)
    assert decoder.batches and max(decoder.batches) >= 4  # JPEGs went through in batches
    assert on_gpu["errors"] == on_cpu["errors"] == {"cut.jpg"}
    assert on_gpu["report"].embedded == on_cpu["report"].embedded == 9
    assert set(on_gpu["rows"]) == set(on_cpu["rows"])
    for name, (w, h, v) in on_gpu["rows"].items():
        cw, ch, cv = on_cpu["rows"][name]
        assert (w, h) == (cw, ch), name
        assert float(v @ cv) > 0.99, name  # same picture, crops within a grey level or so
    assert on_gpu["rows"]["turned.jpg"][:2] == (200, 300)
