"""Preprocessing throughput per core on 12 MP JPEGs: transformers' CLIPImageProcessor vs ours.

Prints images/s for each method measured in the same run, the ratio to CLIPImageProcessor, and
the per-pixel difference of the 336x336 crops against it (grey levels, 0-255). To judge whether a
difference matters for retrieval, it is compared with the difference that re-saving the same
photo as a quality-95 JPEG makes: a change nobody would call a different photo.

    python bench/preprocess.py            # 8 photos, a few seconds each method
    python bench/preprocess.py --quick    # 2 smaller photos, for the test suite
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")  # per-core numbers: one thread everywhere

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from llm2search.models.preprocess import decode_image  # noqa: E402
from llm2search.models.presets import CLIP_336  # noqa: E402


def make_photo(seed: int, size: tuple[int, int]) -> bytes:
    """A photo-like JPEG: smooth sky-to-ground gradient, soft shapes, fine texture, sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    y = np.linspace(0, 1, h)[:, None, None]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = np.broadcast_to(top * (1 - y) + bottom * y, (h, w, 3)).copy()
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(40):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(w / 60, w / 6)
        draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    pil = pil.filter(ImageFilter.GaussianBlur(3))
    arr = np.asarray(pil, dtype=np.int16)
    texture = rng.normal(0, 6, (h // 4, w // 4, 1)).repeat(4, 0).repeat(4, 1)
    arr = np.clip(arr + texture + rng.normal(0, 3, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def clip_processor() -> Callable[[bytes], np.ndarray]:
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    mean = np.array(proc.image_mean)[:, None, None]
    std = np.array(proc.image_std)[:, None, None]

    def run(data: bytes) -> np.ndarray:
        pixels = proc(images=Image.open(io.BytesIO(data)), return_tensors="np").pixel_values[0]
        return ((pixels * std + mean) * 255.0).transpose(1, 2, 0)  # back to 0-255 HWC

    return run


def ours(draft: bool, margin: int = 2) -> Callable[[bytes], np.ndarray]:
    import llm2search.models.preprocess as pre

    def run(data: bytes) -> np.ndarray:
        pre.DRAFT_MARGIN = margin
        return decode_image(data, CLIP_336, draft=draft).pixels.astype(np.float64)

    return run


def simplejpeg_scaled(margin: int = 2) -> Callable[[bytes], np.ndarray] | None:
    try:
        import simplejpeg
    except ImportError:
        return None
    from llm2search.models.preprocess import resize_and_crop

    def run(data: bytes) -> np.ndarray:
        w, h = simplejpeg.decode_jpeg_header(data)[:2][::-1]
        scale = min(w, h) / (margin * 336)
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=int(w / scale), min_height=int(h / scale))
        return resize_and_crop(Image.fromarray(arr), CLIP_336).astype(np.float64)

    return run


def gpu_path() -> Callable[[bytes], np.ndarray]:
    """The GPU JPEG path's preprocessing (llm2search/models/gpu_preprocess.py) run on the CPU:
    a full decode standing in for nvJPEG, then torch's antialiased bicubic resize and crop. Its
    differences are the GPU path's; its speed here is the CPU's, not a GPU's."""
    import torch

    from llm2search.models.gpu_preprocess import crops_from_jpegs, jpeg_header

    def decode(datas: list[bytes]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d)).convert("RGB"))).permute(2, 0, 1).contiguous()
                for d in datas]

    def run(data: bytes) -> np.ndarray:
        crop = crops_from_jpegs([data], [jpeg_header(data, 10**12)], CLIP_336, decode)[0]
        return crop.numpy().astype(np.float64)

    return run


def timed(fn: Callable[[bytes], np.ndarray], photos: list[bytes], seconds: float) -> tuple[float, list[np.ndarray]]:
    outputs = [fn(p) for p in photos]  # warm-up, and the outputs compared below
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(photos):
        fn(photos[done % len(photos)])
        done += 1
    return done / (time.perf_counter() - start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 small photos, short timing (tests)")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per method")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()
    size, count, seconds = ((1200, 900), 2, 0.3) if args.quick else ((4000, 3000), args.photos, args.seconds)
    photos = [make_photo(i, size) for i in range(count)]

    reference_rate, reference = timed(clip_processor(), photos, seconds)
    resaved = []
    for p in photos:
        buf = io.BytesIO()
        Image.open(io.BytesIO(p)).save(buf, "JPEG", quality=95)
        resaved.append(buf.getvalue())
    _, resaved_out = timed(clip_processor(), resaved, 0)

    methods: dict[str, Callable[[bytes], np.ndarray] | None] = {
        "PIL full decode + our resize (draft off)": ours(draft=False),
        "PIL draft decode to >= 2x target (default)": ours(draft=True, margin=2),
        "PIL draft decode to >= 1x target": ours(draft=True, margin=1),
        "simplejpeg scaled decode to >= 2x target": simplejpeg_scaled(2),
        "GPU path's torch resize of a full decode (on the CPU)": gpu_path(),
    }
    rows = [{
        "method": "CLIPImageProcessor (transformers, full decode)",
        "images_per_s": reference_rate, "ratio": 1.0, "mean_diff": 0.0, "max_diff": 0.0,
    }, {
        "method": "same photo re-saved as JPEG q95, then CLIPImageProcessor",
        "images_per_s": None, "ratio": None,
        **_diff(resaved_out, reference),
    }]
    for name, fn in methods.items():
        if fn is None:
            rows.append({"method": name + " (not installed)", "images_per_s": None, "ratio": None})
            continue
        rate, out = timed(fn, photos, seconds)
        rows.append({"method": name, "images_per_s": rate, "ratio": rate / reference_rate, **_diff(out, reference)})

    if args.json:
        print(json.dumps({"photo_size": list(size), "photos": count, "rows": rows}, indent=2))
        return
    print(f"{count} photos of {size[0]}x{size[1]} px, one core; differences vs CLIPImageProcessor in grey levels")
    print(f"{'method':<58} {'img/s':>7} {'x CLIP':>7} {'mean':>6} {'p99.9':>6} {'max':>5}")
    for r in rows:
        rate = f"{r['images_per_s']:.1f}" if r.get("images_per_s") else "-"
        ratio = f"{r['ratio']:.1f}" if r.get("ratio") else "-"
        diffs = (f"{r['mean_diff']:.2f} {r['p999_diff']:>6.1f} {r['max_diff']:>5.0f}"
                 if "p999_diff" in r else "     -      -     -")
        print(f"{r['method']:<58} {rate:>7} {ratio:>7} {diffs}")


def _diff(outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    d = np.concatenate([np.abs(a - b).ravel() for a, b in zip(outputs, reference)])
    return {"mean_diff": float(d.mean()), "p999_diff": float(np.quantile(d, 0.999)), "max_diff": float(d.max())}


if __name__ == "__main__":
    main()
