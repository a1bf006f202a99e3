"""CLIP preprocessing of JPEGs decoded on the GPU (nvJPEG through torchvision), in torch ops.

The same geometry as `preprocess.resize_and_crop` (shortest side to the model's size with
CLIPImageProcessor's rounding, antialiased bicubic, centre crop) and the same EXIF orientation, so
a photo gives the same crop, within what bench/preprocess.py accepts, whichever path decoded it.
The CPU reduces JPEGs in libjpeg (draft mode) before the resize; here the full image is decoded
and the antialiased resize does the reduction. The torch ops run on any device; only the decode
(`nvjpeg_decoder`) needs CUDA and torchvision. No torch import at module level: `jpeg_header`
runs in decode workers.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from PIL import Image

from .exif import PhotoExif, read_exif
from .spec import PreprocessConfig

_ORIENTATION = 0x0112
# nvJPEG decodes baseline and progressive 8-bit JPEGs in these modes; others (CMYK, 12-bit) go
# to the CPU path.
GPU_JPEG_MODES = ("RGB", "L")


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int  # EXIF orientation tag, 1 = as stored
    exif: PhotoExif = PhotoExif()

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as shown, after the orientation (5-8 turn the picture by 90 degrees)."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


def jpeg_header(data: bytes, max_pixels: int) -> JpegHeader | None:
    """Size and orientation of a JPEG the GPU can decode, read without decoding pixels; None for
    anything else (other formats, CMYK, over the pixel limit): those take the CPU path, which
    also gives the error message for a bad file."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.format != "JPEG" or img.mode not in GPU_JPEG_MODES:
                return None
            w, h = img.size
            if w < 1 or h < 1 or w * h > max_pixels:
                return None
            orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
            exif = read_exif(img)
    except Exception:  # noqa: BLE001 - any doubt: the CPU path decides and explains
        return None
    return JpegHeader(w, h, orientation if 1 <= orientation <= 8 else 1, exif)


def orient(img: Any, orientation: int) -> Any:
    """A (3, H, W) tensor turned as PIL's ImageOps.exif_transpose turns the image."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return img.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return img.transpose(-1, -2).flip(-2)
    return img


def resize_and_crop(img: Any, config: PreprocessConfig) -> Any:
    """(3, H, W) uint8 tensor to a (S, S, 3) uint8 centre crop on the same device."""
    import torch
    import torch.nn.functional as F

    size = config.image_size
    _, h, w = img.shape
    if w <= h:
        new_w, new_h = size, max(size, int(size * h / w))
    else:
        new_w, new_h = max(size, int(size * w / h)), size
    x = img
    if (new_w, new_h) != (w, h):
        mode = "bicubic" if config.resample == "bicubic" else "bilinear"
        x = F.interpolate(img[None].float(), size=(new_h, new_w), mode=mode, antialias=True,
                          align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return x[:, top:top + size, left:left + size].permute(1, 2, 0).contiguous()


Decoder = Callable[[Sequence[bytes]], list[Any]]  # JPEG bytes -> (3, H, W) uint8 tensors


def nvjpeg_decoder(device: str) -> Decoder | None:
    """Batched GPU decoding with torchvision, or None when torchvision cannot be imported."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except (ImportError, RuntimeError):
        return None

    def decode(datas: Sequence[bytes]) -> list[Any]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))

    return decode


def crops_from_jpegs(datas: Sequence[bytes], headers: Sequence[JpegHeader], config: PreprocessConfig,
                     decode: Decoder) -> list[Any | None]:
    """The (S, S, 3) uint8 crop of each JPEG, decoded as one batch; None for a file the batch
    decoder rejects (each is then retried alone, so one bad file costs only itself)."""
    try:
        images: list[Any | None] = list(decode(datas))
    except RuntimeError:
        images = []
        for d in datas:
            try:
                images.append(decode([d])[0])
            except RuntimeError:
                images.append(None)
    out: list[Any | None] = []
    for img, header in zip(images, headers):
        if img is None or img.shape[-2:] != (header.height, header.width):
            out.append(None)  # an unexpected decode: the CPU path decides
            continue
        out.append(resize_and_crop(orient(img, header.orientation), config))
    return out
