"""A synthetic bilingual world: scenes of one to three shapes of one colour, with captions.

The grammar is fixed: counts one/two/three x colours red/green/blue/yellow/black/white x shapes
circle/square/triangle = 54 classes. Each scene varies position, size, background tint, colour
shade and pixel noise, so a model has to read count, colour and shape, not memorise pictures.
No torch here: the CLI's `demo scenes` and the training script both use it.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

COUNTS = ("one", "two", "three")
COLOURS = ("red", "green", "blue", "yellow", "black", "white")
SHAPES = ("circle", "square", "triangle")

# Base RGB of each colour; every scene jitters it. Backgrounds stay mid-grey so black and white
# shapes are as visible as the others (see `_background`).
RGB = {
    "red": (215, 35, 35), "green": (35, 165, 50), "blue": (35, 70, 215),
    "yellow": (235, 215, 35), "black": (20, 20, 20), "white": (240, 240, 240),
}
ZH_COUNT = {"one": "一", "two": "两", "three": "三"}
ZH_COLOUR = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "black": "黑色", "white": "白色"}
ZH_COLOUR_SHORT = {"red": "红", "green": "绿", "blue": "蓝", "yellow": "黄", "black": "黑", "white": "白"}
ZH_SHAPE = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
DIGIT = {"one": 1, "two": 2, "three": 3}
SUPERSAMPLE = 4  # shapes are drawn at 4x and reduced, for anti-aliased edges


@dataclass(frozen=True)
class SceneClass:
    count: str  # one, two, three
    colour: str
    shape: str

    @property
    def number(self) -> int:
        return DIGIT[self.count]

    @property
    def slug(self) -> str:
        """File-name form, e.g. `two-red-circles`."""
        return f"{self.count}-{self.colour}-{self.shape_word}"

    @property
    def shape_word(self) -> str:
        return self.shape if self.number == 1 else self.shape + "s"

    @property
    def en(self) -> str:
        """Canonical English caption: "two red circles", "one blue square"."""
        return f"{self.count} {self.colour} {self.shape_word}"

    @property
    def zh(self) -> str:
        """Canonical Chinese caption: "两个红色的圆形", "一个蓝色的正方形"."""
        return f"{ZH_COUNT[self.count]}个{ZH_COLOUR[self.colour]}的{ZH_SHAPE[self.shape]}"

    def english_phrasings(self) -> list[str]:
        """The canonical caption first, then other ways to say it."""
        n, c, s = self.count, self.colour, self.shape_word
        is_are = "is" if self.number == 1 else "are"
        article = ["a " + c + " " + s, "a single " + c + " " + s] if self.number == 1 else []
        return [
            self.en,
            f"{self.number} {c} {s}",
            f"a picture of {n} {c} {s}",
            f"there {is_are} {n} {c} {s}",
            f"{n} {s} that {is_are} {c}",
            f"an image with {n} {c} {s} on a plain background",
            *article,
        ]

    def chinese_phrasings(self) -> list[str]:
        """The canonical caption first, then other ways to say it."""
        n, c, cs, s = ZH_COUNT[self.count], ZH_COLOUR[self.colour], ZH_COLOUR_SHORT[self.colour], ZH_SHAPE[self.shape]
        return [
            self.zh,
            f"{self.number}个{c}的{s}",
            f"{n}个{c}{s}",
            f"{n}个{cs}{s}",
            f"图片里有{n}个{c}的{s}",
            f"一张有{n}个{c}{s}的图片",
            f"{s}，{c}，{n}个",
        ]


CLASSES: tuple[SceneClass, ...] = tuple(
    SceneClass(n, c, s) for n in COUNTS for c in COLOURS for s in SHAPES
)


def caption_corpus() -> list[str]:
    """Every caption of every class in both languages (the tokenizer is trained on these)."""
    return [t for cls in CLASSES for t in (*cls.english_phrasings(), *cls.chinese_phrasings())]


def render_scene(cls: SceneClass, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One scene of `cls` as a uint8 (size, size, 3) RGB array."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), _background(rng))
    draw = ImageDraw.Draw(img)
    colour = _shade(RGB[cls.colour], rng)
    for cx, cy, r in _place(cls.number, rng, big):
        _draw_shape(draw, cls.shape, cx, cy, r, colour)
    small = img.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32)
    sigma = rng.uniform(0.0, 8.0)
    pixels = pixels + rng.normal(0.0, sigma, size=pixels.shape)
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def iter_scenes(per_class: int, seed: int, size: int = 64) -> Iterator[tuple[str, SceneClass, np.ndarray]]:
    """(file name, class, pixels) for `per_class` scenes of every class. Each scene has its own
    random stream derived from (seed, class, i), so a set is reproducible and order-independent."""
    for k, cls in enumerate(CLASSES):
        for i in range(per_class):
            rng = np.random.default_rng([seed, k, i])
            yield f"{cls.slug}-{i:03d}.png", cls, render_scene(cls, rng, size)


def write_scenes(out: str | Path, per_class: int, seed: int, size: int = 64) -> Path:
    """Write PNG scenes and `labels.csv` (file, count, colour, shape, captions) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, cls, pixels in iter_scenes(per_class, seed, size):
        Image.fromarray(pixels).save(out / name)
        rows.append({"file": name, "count": cls.number, "colour": cls.colour, "shape": cls.shape,
                     "caption_en": cls.en, "caption_zh": cls.zh})
    labels = out / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file", "count", "colour", "shape"])
        writer.writeheader()
        writer.writerows(rows)
    return labels


def read_labels(folder: str | Path) -> dict[str, SceneClass]:
    """File name -> class, from a folder written by `write_scenes`."""
    by_number = {v: k for k, v in DIGIT.items()}
    with open(Path(folder) / "labels.csv", newline="", encoding="utf-8") as f:
        return {r["file"]: SceneClass(by_number[int(r["count"])], r["colour"], r["shape"])
                for r in csv.DictReader(f)}


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    # Mid-grey with a mild tint: at least ~70 levels from black shapes and from white ones.
    grey = rng.uniform(100, 165)
    tint = rng.uniform(-22, 22, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))  # type: ignore[return-value]


def _shade(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    jitter = rng.uniform(-20, 20, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + jitter, 0, 255))  # type: ignore[return-value]


def _place(n: int, rng: np.random.Generator, big: int) -> list[tuple[float, float, float]]:
    """n non-overlapping (centre x, centre y, radius) inside the frame; shrinks if crowded."""
    lo, hi = 0.09 * big, (0.17 if n > 1 else 0.24) * big
    for attempt in range(200):
        shrink = 0.85 ** (attempt // 40)
        placed: list[tuple[float, float, float]] = []
        for _ in range(n):
            r = rng.uniform(lo, hi) * shrink
            cx, cy = rng.uniform(r + 2, big - r - 2, size=2)
            if all(math.hypot(cx - x, cy - y) > r + rr + 0.06 * big for x, y, rr in placed):
                placed.append((cx, cy, r))
        if len(placed) == n:
            return placed
    raise RuntimeError("could not place shapes")  # pragma: no cover - 200 tries always suffice


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                colour: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        h = r * 0.85  # same visual area class as the circle
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
