"""Images to unit vectors with the LLM2CLIP vision tower."""

from __future__ import annotations

from typing import Any

import numpy as np

from .spec import ModelSpec


class ImageEncoder:
    """Takes uint8 centre crops (N, S, S, 3) from `preprocess.decode_image`; returns (N, dim) float32
    unit vectors. Normalisation runs on the device; on a GPU the batch goes through pinned memory
    with a non-blocking copy and the tower runs in fp16."""

    def __init__(self, clip_model: Any, spec: ModelSpec, device: str):
        import torch

        self.model = clip_model
        self.spec = spec
        self.device = device
        self.dtype = next(clip_model.parameters()).dtype
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(spec.preprocess.mean, device=device).view(shape) * 255.0
        self._std = torch.tensor(spec.preprocess.std, device=device).view(shape) * 255.0

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch; on a GPU out-of-memory error the batch is split in halves and retried."""
        import torch

        try:
            return self._encode(pixels)
        except torch.cuda.OutOfMemoryError:
            if len(pixels) <= 1:
                raise
        # Retried here, not inside the except block: there the exception's traceback still holds
        # the failed call's frames, and with them its GPU tensors, so the halves would run with
        # that memory still taken (and fail again).
        torch.cuda.empty_cache()
        half = len(pixels) // 2
        return np.concatenate([self.encode(pixels[:half]), self.encode(pixels[half:])])

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        size = self.spec.preprocess.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 crops of shape (N, {size}, {size}, 3), got {pixels.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        on_gpu = self.device.startswith("cuda")
        if on_gpu:
            batch = batch.pin_memory()
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=on_gpu).permute(0, 3, 1, 2).float()
            x = ((x - self._mean) / self._std).to(self.dtype)
            features = self.model.get_image_features(pixel_values=x).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy()


class MultiDeviceImageEncoder:
    """One vision tower per device (several GPUs on a host); each batch is split across them and
    run in threads (torch releases the GIL), results concatenated in order."""

    def __init__(self, encoders: list[ImageEncoder]):
        from concurrent.futures import ThreadPoolExecutor

        self.encoders = encoders
        self._pool = ThreadPoolExecutor(len(encoders))

    @property
    def dim(self) -> int:
        return self.encoders[0].dim

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        parts = [p for p in np.array_split(pixels, len(self.encoders)) if len(p)]
        results = self._pool.map(lambda pair: pair[0].encode(pair[1]), zip(self.encoders, parts))
        return np.concatenate(list(results))


def auto_batch_size(device: str, image_size: int) -> int:
    """32 on the CPU; on a GPU, what its free memory holds at a generous per-image budget
    (out-of-memory errors still halve the batch)."""
    if not device.startswith("cuda"):
        return 32
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_image = (64 << 20) * (image_size / 336) ** 2  # activations of ViT-L/14 at 336 px, fp16
    return int(min(512, max(8, free // per_image)))
