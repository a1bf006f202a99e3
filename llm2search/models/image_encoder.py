"""Images to unit vectors with the LLM2CLIP vision tower."""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np

from .spec import ModelSpec


Pixels = Union[np.ndarray, Sequence[np.ndarray]]  # (N, S, S, 3) uint8, or N arrays of (S, S, 3)
COPY_CHUNKS = 4  # a GPU batch is copied in this many parts, each while the previous one computes


class ImageEncoder:
    """Takes uint8 centre crops from `preprocess.decode_image`, as one (N, S, S, 3) array or a list
    of (S, S, 3) arrays; returns (N, dim) float32 unit vectors. Normalisation runs on the device.
    On a GPU the crops are stacked once, straight into a pinned buffer kept between batches, and
    copied in parts on a second stream, each part's copy overlapping the previous part's forward
    pass; the tower runs in fp16."""

    def __init__(self, clip_model: Any, spec: ModelSpec, device: str):
        import torch

        self.model = clip_model
        self.spec = spec
        self.device = device
        self.dtype = next(clip_model.parameters()).dtype
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(spec.preprocess.mean, device=device).view(shape) * 255.0
        self._std = torch.tensor(spec.preprocess.std, device=device).view(shape) * 255.0
        self._on_gpu = device.startswith("cuda")
        self._pinned: Any = None  # host staging buffer (GPU only), grown as batches need
        self._copy_stream: Any = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, pixels: Pixels) -> np.ndarray:
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

    def _encode(self, pixels: Pixels) -> np.ndarray:
        import torch

        size = self.spec.preprocess.image_size
        n = len(pixels)
        shape = pixels.shape[1:] if isinstance(pixels, np.ndarray) else (np.shape(pixels[0]) if n else ())
        if (isinstance(pixels, np.ndarray) and pixels.ndim != 4) or tuple(shape) != (size, size, 3):
            raise ValueError(f"expected uint8 crops of shape (N, {size}, {size}, 3), got {n} of {tuple(shape)}")
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        host = self._stage(pixels)
        parts = [p for p in np.array_split(np.arange(n), min(n, COPY_CHUNKS if self._on_gpu else 1)) if len(p)]
        with torch.inference_mode():
            features = [self._forward(x) for x in self._copied(host, parts)]
            out = torch.cat(features).float()
            return torch.nn.functional.normalize(out, dim=-1).cpu().numpy()

    def _stage(self, pixels: Pixels) -> Any:
        """The batch as one host tensor: pinned (GPU) or plain (CPU), stacked with one copy."""
        import torch

        if not self._on_gpu:
            stacked = np.ascontiguousarray(pixels) if isinstance(pixels, np.ndarray) else np.stack(pixels)
            return torch.from_numpy(stacked)
        n = len(pixels)
        if self._pinned is None or self._pinned.shape[0] < n:
            size = self.spec.preprocess.image_size
            self._pinned = torch.empty((n, size, size, 3), dtype=torch.uint8).pin_memory()
        host = self._pinned[:n]
        np.stack(list(pixels), out=host.numpy())  # the only host copy: into pinned memory
        return host

    def _copied(self, host: Any, parts: list[np.ndarray]) -> Any:
        """Each part of the batch on the device, in order. On a GPU all copies are queued on a
        side stream at once; the forward pass of part i waits only for part i's copy."""
        import torch

        if not self._on_gpu:
            for part in parts:
                yield host[int(part[0]):int(part[-1]) + 1]
            return
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(device=self.device)
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(compute)  # the pinned buffer's last readers are done
        copies = []
        with torch.cuda.stream(self._copy_stream):
            for part in parts:
                x = host[int(part[0]):int(part[-1]) + 1].to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._copy_stream)
                copies.append((x, done))
        for x, done in copies:
            compute.wait_event(done)
            x.record_stream(compute)  # allocated on the copy stream, used on this one
            yield x

    def _forward(self, x: Any) -> Any:
        x = x.permute(0, 3, 1, 2).float()
        x = ((x - self._mean) / self._std).to(self.dtype)
        return self.model.get_image_features(pixel_values=x)


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

    def encode(self, pixels: Pixels) -> np.ndarray:
        bounds = np.linspace(0, len(pixels), len(self.encoders) + 1).astype(int)
        parts = [(e, pixels[a:b]) for e, a, b in zip(self.encoders, bounds[:-1], bounds[1:]) if b > a]
        return np.concatenate(list(self._pool.map(lambda pair: pair[0].encode(pair[1]), parts)))


def auto_batch_size(device: str, image_size: int) -> int:
    """32 on the CPU; on a GPU, what its free memory holds at a generous per-image budget
    (out-of-memory errors still halve the batch)."""
    if not device.startswith("cuda"):
        return 32
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    per_image = (64 << 20) * (image_size / 336) ** 2  # activations of ViT-L/14 at 336 px, fp16
    return int(min(512, max(8, free // per_image)))
