"""Camera RAW files (DNG, CR2, NEF, ARW, ...): the photo the camera rendered itself.

These formats are TIFF containers holding the sensor data plus a full-size or large JPEG preview
that the camera rendered with its own colour science. The preview is what a viewer shows and far
more than the model's 336 px need, so it is what gets indexed: found by walking the TIFF
directories (IFD chain and SubIFDs), no dependency needed. A RAW file without a usable preview
is demosaiced with `rawpy` (LibRaw) when it is installed."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

from .exif import PhotoExif

_MAKE, _ORIENTATION, _SUBIFDS, _DNG_VERSION = 271, 274, 330, 50706
_COMPRESSION, _PHOTOMETRIC, _BITS = 259, 262, 258
_STRIP_OFFSETS, _STRIP_COUNTS = 273, 279
_JPEG_OFFSET, _JPEG_LENGTH = 513, 514
_CFA, _LINEAR_RAW = 32803, 34892  # photometric interpretations of sensor data, never a preview
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")  # little- and big-endian TIFF: every RAW format read here
_MAX_IFDS = 64  # a malformed file may chain directories in a loop
# JPEG frame markers Pillow decodes: baseline, extended, progressive. Lossless (SOF3) is raw data.
_DECODABLE_SOF = (0xC0, 0xC1, 0xC2)


class RawDecodeError(Exception):
    """A RAW file whose photo cannot be had; the message is the reason recorded in the index."""


@dataclass(frozen=True)
class RawPhoto:
    format: str  # DNG, CR2, NEF, ARW, or RAW for other TIFF-based makes
    jpeg: bytes | None  # the largest decodable embedded preview
    orientation: int  # TIFF orientation of the RAW (1 = as stored)
    tiff: bytes  # the container, for its EXIF


def is_tiff_raw(data: bytes) -> bool:
    """A TIFF that holds sensor data (CFA or linear raw), or a DNG/CR2: not a plain TIFF image."""
    layout = _layout(data)
    return layout is not None and layout[1]


def raw_format(data: bytes) -> str | None:
    layout = _layout(data)
    return layout[0] if layout is not None and layout[1] else None


def read_raw(data: bytes) -> RawPhoto:
    """The RAW's format and its largest embedded JPEG preview (None when it has none)."""
    layout = _layout(data)
    if layout is None or not layout[1]:
        raise RawDecodeError("not a camera RAW file")
    fmt, _, ifds, orientation = layout
    best: bytes | None = None
    for ifd in ifds:
        for start, length in _jpeg_spans(ifd):
            if 0 < start and length > 0 and start + length <= len(data) and (best is None or length > len(best)):
                chunk = data[start:start + length]
                if _decodable_jpeg(chunk):
                    best = chunk
    return RawPhoto(fmt, best, orientation, data)


def demosaic(data: bytes) -> Any:
    """An RGB PIL image demosaiced from the sensor data at half size by LibRaw (rawpy): plenty
    for the model's input, and four times less work than full size."""
    try:
        import rawpy
    except ImportError as e:
        raise RawDecodeError("camera RAW without an embedded preview; install rawpy "
                             "(pip install rawpy) to decode its sensor data") from e
    from PIL import Image

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            return Image.fromarray(rgb)
    except Exception as e:  # noqa: BLE001 - LibRaw raises its own error types for corrupt files
        raise RawDecodeError(f"cannot decode camera RAW: {e}") from e


def raw_exif(raw: RawPhoto) -> PhotoExif:
    """EXIF of the RAW container (the preview JPEG usually carries none)."""
    from PIL import Image

    from .exif import read_exif_tags

    exif = Image.Exif()
    try:
        exif.load(raw.tiff)
    except Exception:  # noqa: BLE001 - malformed EXIF: the fields are optional
        return PhotoExif()
    return read_exif_tags(exif)


# -- TIFF structure ----------------------------------------------------------------------------
def _layout(data: bytes) -> tuple[str, bool, list[dict[int, Any]], int] | None:
    """(format, holds sensor data, every IFD, orientation) of a TIFF, or None if not a TIFF."""
    if len(data) < 16 or data[:4] not in TIFF_MAGIC:
        return None
    order = "<" if data[:2] == b"II" else ">"
    ifds: list[dict[int, Any]] = []
    seen: set[int] = set()
    pending = [struct.unpack(order + "I", data[4:8])[0]]
    while pending and len(ifds) < _MAX_IFDS:
        offset = pending.pop(0)
        if offset in seen or not 8 <= offset < len(data) - 2:
            continue
        seen.add(offset)
        entries, next_offset = _read_ifd(data, order, offset)
        ifds.append(entries)
        subs = entries.get(_SUBIFDS)
        pending.extend(subs if isinstance(subs, list) else [subs] if isinstance(subs, int) else [])
        if next_offset:
            pending.append(next_offset)
    if not ifds:
        return None
    first = ifds[0]
    make = _ascii(first.get(_MAKE)).upper()
    sensor = any(_first(i.get(_PHOTOMETRIC)) in (_CFA, _LINEAR_RAW) for i in ifds)
    if _DNG_VERSION in first:
        fmt = "DNG"
    elif data[8:10] == b"CR":
        fmt = "CR2"
    elif make.startswith("NIKON"):
        fmt = "NEF"
    elif make.startswith("SONY"):
        fmt = "ARW"
    else:
        fmt = "RAW"
    is_raw = fmt in ("DNG", "CR2") or sensor
    orientation = _first(first.get(_ORIENTATION)) or 1
    return fmt, is_raw, ifds, int(orientation) if 1 <= int(orientation) <= 8 else 1


def _read_ifd(data: bytes, order: str, offset: int) -> tuple[dict[int, Any], int]:
    (count,) = struct.unpack_from(order + "H", data, offset)
    entries: dict[int, Any] = {}
    at = offset + 2
    for _ in range(min(count, 1024)):
        if at + 12 > len(data):
            break
        tag, typ, n = struct.unpack_from(order + "HHI", data, at)
        size = _TYPE_SIZES.get(typ, 0) * n
        where = at + 8 if size <= 4 else struct.unpack_from(order + "I", data, at + 8)[0]
        at += 12
        if size == 0 or where + size > len(data):
            continue
        raw = data[where:where + size]
        if typ == 2:
            entries[tag] = raw
        elif typ in (3, 8):
            entries[tag] = _scalar_or_list(struct.unpack(order + "H" * n, raw)) if n <= 4096 else None
        elif typ in (4, 9, 13):
            entries[tag] = _scalar_or_list(struct.unpack(order + "I" * n, raw)) if n <= 4096 else None
        elif typ in (1, 7) and n <= 16:
            entries[tag] = raw
    next_offset = struct.unpack_from(order + "I", data, at)[0] if at + 4 <= len(data) else 0
    return entries, next_offset


def _jpeg_spans(ifd: dict[int, Any]) -> list[tuple[int, int]]:
    spans = []
    if isinstance(ifd.get(_JPEG_OFFSET), int) and isinstance(ifd.get(_JPEG_LENGTH), int):
        spans.append((ifd[_JPEG_OFFSET], ifd[_JPEG_LENGTH]))
    compression = _first(ifd.get(_COMPRESSION))
    photometric = _first(ifd.get(_PHOTOMETRIC))
    bits = _first(ifd.get(_BITS)) or 8
    offsets, counts = ifd.get(_STRIP_OFFSETS), ifd.get(_STRIP_COUNTS)
    if compression in (6, 7) and photometric not in (_CFA, _LINEAR_RAW) and bits <= 8 \
            and isinstance(offsets, int) and isinstance(counts, int):
        spans.append((offsets, counts))  # one strip holding a whole JPEG (CR2's IFD0, NEF previews)
    return spans


def _decodable_jpeg(chunk: bytes) -> bool:
    """A baseline or progressive JPEG (not the lossless JPEG some RAWs store sensor data in)."""
    if chunk[:2] != b"\xff\xd8":
        return False
    at = 2
    while at + 4 <= len(chunk):
        if chunk[at] != 0xFF:
            return False
        marker = chunk[at + 1]
        if marker in _DECODABLE_SOF:
            return True
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return False  # lossless or arithmetic-coded frame
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            at += 2
            continue
        (length,) = struct.unpack_from(">H", chunk, at + 2)
        at += 2 + length
    return False


def _scalar_or_list(values: tuple[int, ...]) -> int | list[int]:
    return values[0] if len(values) == 1 else list(values)


def _first(v: Any) -> int | None:
    if isinstance(v, list):
        return v[0] if v else None
    return v if isinstance(v, int) else None


def _ascii(v: Any) -> str:
    return v.split(b"\x00")[0].decode("ascii", "replace") if isinstance(v, bytes) else ""
