"""Query vectors beyond one sentence: an image, a weighted mix of texts and images with negative
texts, and zero-shot matching of one image against captions (the LLM2CLIP usage example)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidQueryError
from ..models.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

# CLIP's logit scale: LLM2CLIP's example computes softmax(100 * image @ text.T).
LOGIT_SCALE = 100.0


class ImageInputError(InvalidQueryError):
    """An uploaded image that cannot be used; `too_large` when only its size is the problem."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


@dataclass(frozen=True)
class WeightedVector:
    """One part of a combined query; a negative weight pushes results away from it."""

    vector: np.ndarray
    weight: float


def image_pixels(data: bytes, embedder: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes into the model's (1, S, S, 3) uint8 input, or raise ImageInputError."""
    if not data:
        raise ImageInputError("the image is empty (0 bytes)")
    _check_pixels(data, max_pixels)
    try:
        decoded = decode_image(data, embedder.spec.preprocess, max_pixels=max_pixels)
    except ImageDecodeError as e:
        raise ImageInputError(f"not a usable image: {e}") from e
    return np.array(decoded.pixels[None])  # writable: torch warns on read-only arrays


def combine(parts: Sequence[WeightedVector]) -> np.ndarray:
    """Weighted sum of unit vectors, renormalised to a unit vector."""
    if not parts:
        raise InvalidQueryError("the query is empty: give a text, an image or an item id")
    total = np.zeros_like(np.asarray(parts[0].vector, dtype=np.float32))
    for p in parts:
        v = np.asarray(p.vector, dtype=np.float32)
        total += float(p.weight) * v / max(float(np.linalg.norm(v)), 1e-12)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InvalidQueryError("the weighted query parts cancel out; change the weights")
    return total / norm


def caption_probabilities(image_vector: np.ndarray, text_vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, cosine similarities) of each caption for one image: softmax(100 x cos)."""
    cos = np.asarray(text_vectors, dtype=np.float64) @ np.asarray(image_vector, dtype=np.float64)
    logits = LOGIT_SCALE * cos
    e = np.exp(logits - logits.max())
    return e / e.sum(), cos


def _check_pixels(data: bytes, max_pixels: int) -> None:
    """Refuse a huge image from its header, before anything is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except Exception as e:  # noqa: BLE001 - any failure to read a header means "not an image"
        raise ImageInputError("not a usable image: unknown or corrupt format") from e
    if w * h > max_pixels:
        raise ImageInputError(f"the image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}",
                              too_large=True)
