"""One object that embeds images and text for a model spec, loading each half only when needed."""

from __future__ import annotations

from typing import Any

import numpy as np

from .image_encoder import ImageEncoder
from .loading import load_clip_model, load_llm2vec, pick_device
from .spec import ModelSpec
from .text_encoder import TextEncoder


class Embedder:
    """Indexing needs only the vision tower; a text query also loads the LLM (the adapter lives
    in the vision checkpoint, so that is loaded either way)."""

    def __init__(self, spec: ModelSpec, device: str | None = None):
        self.spec = spec
        self.device = pick_device(device)
        self._clip: Any = None
        self._image: ImageEncoder | None = None
        self._text: TextEncoder | None = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _clip_model(self) -> Any:
        if self._clip is None:
            self._clip = load_clip_model(self.spec, self.device)
        return self._clip

    @property
    def image_encoder(self) -> ImageEncoder:
        if self._image is None:
            self._image = ImageEncoder(self._clip_model(), self.spec, self.device)
        return self._image

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            l2v = load_llm2vec(self.spec, self.device)
            self._text = TextEncoder(l2v, self._clip_model(), self.spec, self.device)
        return self._text

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image_encoder.encode(pixels)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_encoder.encode(texts)
