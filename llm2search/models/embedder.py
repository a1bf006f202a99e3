"""One object that embeds images and text for a model spec, loading each half only when needed."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np

from .image_encoder import ImageEncoder, MultiDeviceImageEncoder, auto_batch_size
from .loading import load_clip_model, load_llm2vec, pick_devices
from .spec import ModelSpec
from .text_encoder import TextEncoder


class Embedder:
    """Indexing needs only the vision tower; a text query also loads the LLM (the adapter lives
    in the vision checkpoint, so that is loaded either way)."""

    def __init__(self, spec: ModelSpec, device: str | None = None):
        self.spec = spec
        self.devices = pick_devices(device)
        self.device = self.devices[0]  # text and the adapter run here
        self._clip: Any = None
        self._image: ImageEncoder | MultiDeviceImageEncoder | None = None
        self._text: TextEncoder | None = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def _clip_model(self) -> Any:
        if self._clip is None:
            self._clip = load_clip_model(self.spec, self.device)
        return self._clip

    @property
    def image_encoder(self) -> ImageEncoder | MultiDeviceImageEncoder:
        if self._image is None:
            first = ImageEncoder(self._clip_model(), self.spec, self.device)
            if len(self.devices) == 1:
                self._image = first
            else:
                # Read from disk once: the other devices get copies of the loaded tower.
                others = [ImageEncoder(copy.deepcopy(first.model).to(d), self.spec, d) for d in self.devices[1:]]
                self._image = MultiDeviceImageEncoder([first, *others])
        return self._image

    def batch_size(self) -> int:
        """A good image batch for these devices (per device, times the device count)."""
        return auto_batch_size(self.device, self.spec.preprocess.image_size) * len(self.devices)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            l2v = load_llm2vec(self.spec, self.device)
            self._text = TextEncoder(l2v, self._clip_model(), self.spec, self.device)
        return self._text

    def embed_pixels(self, pixels: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """(N, S, S, 3) uint8 crops, as one array or a list of (S, S, 3) arrays."""
        return self.image_encoder.encode(pixels)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_encoder.encode(texts)

    def truncated(self, texts: list[str]) -> list[bool]:
        """Which texts are longer than the text model's token limit (they are searched cut)."""
        return [self.text_encoder.prepare(t)[1] for t in texts]

    @property
    def token_limit(self) -> int:
        """Query tokens the text model reads (from the model's config, no weights loaded)."""
        from .text_encoder import token_limit

        return token_limit(self.spec.text_config.max_length)
