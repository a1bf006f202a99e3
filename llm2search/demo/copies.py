"""A labelled near-duplicate set: distinct synthetic photos of the demo world, each with copies the way a library
gets them (re-saved at low JPEG quality, resized, recompressed as WebP, PNG of a resize, a burst
neighbour: slightly shifted and brighter). For testing and measuring `llm2search duplicates`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .scenes import CLASSES, render_scene

VARIANTS = ("resaved_q55", "half_size", "webp_q50", "png_75", "burst")


def _base(rng: np.random.Generator, index: int, size: tuple[int, int]) -> "object":
    """A scene of the demo world (a class of its own per original while classes last), with
    film grain: photos the demo model can tell apart by what they show."""
    from PIL import Image

    w, h = size
    scene = render_scene(CLASSES[index % len(CLASSES)], rng, max(w, h)).astype(np.int16)
    top, left = (scene.shape[0] - h) // 2, (scene.shape[1] - w) // 2
    crop = scene[top:top + h, left:left + w]
    grain = rng.integers(-6, 7, size=crop.shape)
    return Image.fromarray(np.clip(crop + grain, 0, 255).astype(np.uint8))


def write_copies(out: Path, originals: int = 40, seed: int = 0, size: tuple[int, int] = (320, 240)) -> Path:
    """Write `originals` photos, most with one to three copies; returns labels.csv (file, group)."""
    from PIL import Image, ImageEnhance

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = []
    for g in range(originals):
        img = _base(rng, g, size)
        name = f"p{g:04d}"
        img.save(out / f"{name}.jpg", quality=92)
        labels.append((f"{name}.jpg", g))
        if g % 4 == 3:
            continue  # a quarter of the photos have no copy at all
        for variant in rng.choice(VARIANTS, size=int(rng.integers(1, 4)), replace=False):
            target = out / f"{name}_{variant}"
            if variant == "resaved_q55":
                img.save(f"{target}.jpg", quality=55)
                labels.append((f"{target.name}.jpg", g))
            elif variant == "half_size":
                img.resize((size[0] // 2, size[1] // 2), Image.Resampling.LANCZOS).save(f"{target}.jpg", quality=88)
                labels.append((f"{target.name}.jpg", g))
            elif variant == "webp_q50":
                img.save(f"{target}.webp", quality=50)
                labels.append((f"{target.name}.webp", g))
            elif variant == "png_75":
                img.resize((size[0] * 3 // 4, size[1] * 3 // 4), Image.Resampling.BICUBIC).save(f"{target}.png")
                labels.append((f"{target.name}.png", g))
            else:  # burst: the next frame, framed a little differently and a little brighter
                dx, dy = size[0] // 40, size[1] // 40
                shot = ImageEnhance.Brightness(img.crop((dx, dy, size[0], size[1]))).enhance(1.05)
                shot.resize(size, Image.Resampling.BICUBIC).save(f"{target}.jpg", quality=90)
                labels.append((f"{target.name}.jpg", g))
    path = out / "labels.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "group"])
        writer.writerows(labels)
    return path


def read_labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["file"]: int(row["group"]) for row in csv.DictReader(fh)}


def pair_scores(found: list[set[str]], truth: dict[str, int]) -> tuple[float, float]:
    """(precision, recall) over pairs: a pair is right when both files share a true group."""
    predicted = {frozenset((a, b)) for g in found for a in g for b in g if a < b}
    groups: dict[int, list[str]] = {}
    for f, g in truth.items():
        groups.setdefault(g, []).append(f)
    actual = {frozenset((a, b)) for g in groups.values() for a in g for b in g if a < b}
    right = len(predicted & actual)
    precision = right / len(predicted) if predicted else 1.0
    recall = right / len(actual) if actual else 1.0
    return precision, recall
