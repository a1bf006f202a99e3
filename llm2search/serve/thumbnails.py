"""Thumbnails and browser-viewable copies of indexed photos, read from a file opened by
files.open_indexed (paths come from the index's own metadata, never from a request)."""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

from PIL import Image, ImageOps

from ..errors import ItemNotFoundError
from ..models.preprocess import _to_rgb  # same alpha / 16-bit handling as indexing

# Formats every browser shows as they are; others (HEIC, TIFF, ...) are sent as JPEG.
BROWSER_FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png",
                   "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
FULL_SIZE_LIMIT = 4096  # longest side of a converted full image


def thumbnail_jpeg(fh: BinaryIO, size: int, quality: int = 85) -> bytes:
    """A JPEG whose longest side is at most `size`, in display orientation."""
    with _open(fh) as img:
        try:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))  # libjpeg decodes at 1/2..1/8 scale: much faster
            img = ImageOps.exif_transpose(img)
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
            return _jpeg(_to_rgb(img), quality)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ItemNotFoundError(f"the photo cannot be read any more: {e}") from e


def viewable(fh: BinaryIO, fmt: str) -> tuple[bytes | BinaryIO, str]:
    """(open file or bytes, media type) a browser can show: the file itself when it can, else
    JPEG. The caller closes a file it gets back."""
    media = BROWSER_FORMATS.get((fmt or "").upper())
    if media is not None:
        return fh, media
    with fh, _open(fh) as img:
        try:
            img = ImageOps.exif_transpose(img)
            img.thumbnail((FULL_SIZE_LIMIT, FULL_SIZE_LIMIT), Image.Resampling.LANCZOS)
            return _jpeg(_to_rgb(img), 90), "image/jpeg"
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise ItemNotFoundError(f"the photo cannot be read any more: {e}") from e


def _open(fh: BinaryIO) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(fh)
    except FileNotFoundError as e:
        raise ItemNotFoundError("the photo is no longer on disk (reindex to update)") from e
    except OSError as e:
        raise ItemNotFoundError(f"the photo cannot be read any more: {e}") from e


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
