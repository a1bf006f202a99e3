"""Decode an image file and preprocess it the CLIP way, fast. No torch here: runs in workers.

The output is a uint8 `image_size x image_size x 3` centre crop; scaling to [0, 1] and the CLIP
mean/std normalisation happen on the encoder's device, so workers ship 4x fewer bytes.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .exif import PhotoExif, read_exif
from .raw import TIFF_MAGIC, RawDecodeError, demosaic, is_tiff_raw, raw_exif, read_raw
from .spec import PreprocessConfig

# AVIF is Pillow's own (11.3+); MPO (phone cameras' multi-frame JPEG) too.
try:  # HEIC/HEIF (iPhone photos); optional at run time, declared as a dependency.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - depends on the platform's wheels
    pass
try:  # JPEG XL; optional at run time, declared as a dependency.
    import pillow_jxl  # noqa: F401 - registers the JXL opener on import
except ImportError:  # pragma: no cover
    pass

# Our own pixel limit replaces PIL's bomb check so the message can name the flag that changes it.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 250_000_000
# JPEG draft decoding keeps the shortest side at least this many times the model's input size:
# decoding straight to the target size loses detail that the final bicubic resize would keep.
DRAFT_MARGIN = 2

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageDecodeError(Exception):
    """The file is not an image we can use; the message is the reason recorded in the index."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, (S, S, 3), RGB
    width: int  # displayed size, after EXIF orientation
    height: int
    format: str
    exif: PhotoExif = PhotoExif()  # capture time, camera, lens, GPS

    @property
    def exif_time(self) -> int | None:
        """Capture time, seconds since the epoch (camera clock read as UTC)."""
        return self.exif.time


def decode_image(
    source: bytes | BinaryIO,
    config: PreprocessConfig,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> DecodedImage:
    """Open, orient, reduce and centre-crop one image. Raises ImageDecodeError with a reason."""
    data, stream = _source(source)  # an OSError reading the file is the caller's to report
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncated EXIF, palette transparency notes, ...
            img, fmt, exif = _open(data, stream)
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageDecodeError(f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                    "(raise it with --max-pixels if the file is genuine)"
                )
            if draft and img.format in ("JPEG", "MPO"):
                _draft(img, config.image_size)
            img = ImageOps.exif_transpose(img)
            width, height = _oriented_size(img, w, h)
            rgb = _to_rgb(img)
            pixels = resize_and_crop(rgb, config)
    except ImageDecodeError:
        raise
    except RawDecodeError as e:
        raise ImageDecodeError(str(e)) from e
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"decompression bomb: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as e:
        raise ImageDecodeError(_reason(e)) from e
    except MemoryError as e:
        raise ImageDecodeError("not enough memory to decode this image") from e
    return DecodedImage(pixels, width, height, fmt, exif)


def _source(source: bytes | BinaryIO) -> tuple[bytes | None, BinaryIO]:
    """(the bytes when held in memory, a stream to decode). An open file is decoded from the
    file, never read whole (a huge file would take its size in memory), except a TIFF: camera
    RAWs are TIFF containers whose directories are walked in memory."""
    if isinstance(source, bytes):
        return source, io.BytesIO(source)
    head = source.read(len(TIFF_MAGIC[0]))
    source.seek(-len(head), io.SEEK_CUR)
    if head in TIFF_MAGIC:
        data = source.read()
        return data, io.BytesIO(data)
    return None, source


def _open(data: bytes | None, stream: BinaryIO) -> tuple[Image.Image, str, PhotoExif]:
    """(image to decode, format name, EXIF). A camera RAW opens as its embedded preview, with
    the RAW's own orientation and EXIF; anything else as itself."""
    if data is None or not is_tiff_raw(data):
        img = Image.open(stream)
        return img, img.format or "unknown", read_exif(img)
    raw = read_raw(data)
    img = Image.open(io.BytesIO(raw.jpeg)) if raw.jpeg is not None else demosaic(data)
    if raw.orientation != 1 and not img.getexif().get(0x0112):
        img.getexif()[0x0112] = raw.orientation  # exif_transpose reads it from here
    exif = raw_exif(raw)
    if exif == PhotoExif():
        exif = read_exif(img)
    return img, raw.format, exif


def resize_and_crop(img: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Shortest side to `image_size` (CLIPImageProcessor's rounding), then centre crop."""
    size = config.image_size
    w, h = img.size
    if w <= h:
        new_w, new_h = size, max(size, int(size * h / w))
    else:
        new_w, new_h = max(size, int(size * w / h)), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[config.resample])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _draft(img: Image.Image, target: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while keeping enough pixels for quality."""
    w, h = img.size
    scale = min(w, h) / (DRAFT_MARGIN * target)
    if scale >= 2:
        img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))


def _oriented_size(img: Image.Image, w: int, h: int) -> tuple[int, int]:
    # After a draft the pixel size shrank; report the file's true size in display orientation.
    rotated = (img.size[0] > img.size[1]) != (w > h) and w != h
    return (h, w) if rotated else (w, h)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas show as white, as in a photo viewer, not as whatever colour hides there.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, Image.UnidentifiedImageError) or "cannot identify image file" in text:
        return "not a readable image (unknown or corrupt format)"
    if "truncated" in text.lower():
        return f"truncated image file: {text}"
    return f"cannot decode image: {text}"
