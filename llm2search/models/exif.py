"""What a photo's EXIF says about how it was taken: capture time, camera, lens, GPS position.
Every field is optional; EXIF in the wild is often malformed, and a bad tag never fails a file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_MAKE, _MODEL, _DATETIME = 271, 272, 306
_DATETIME_ORIGINAL = 36867
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT = 1, 2, 3, 4, 5, 6
MAX_TEXT = 200  # characters kept of a camera or lens name (some cameras pad with junk)


@dataclass(frozen=True)
class PhotoExif:
    time: int | None = None  # capture time, epoch seconds (the camera clock read as UTC)
    camera_make: str | None = None  # e.g. "Canon"
    camera_model: str | None = None  # e.g. "Canon EOS R5"
    lens: str | None = None  # e.g. "RF24-105mm F4 L IS USM"
    gps_lat: float | None = None  # degrees, north positive
    gps_lon: float | None = None  # degrees, east positive
    gps_alt: float | None = None  # metres above sea level


def read_exif(img: Any) -> PhotoExif:
    """The EXIF fields of an open PIL image (empty when it has none or they are unreadable)."""
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - any failure means "no usable EXIF"
        return PhotoExif()
    return read_exif_tags(exif)


def read_exif_tags(exif: Any) -> PhotoExif:
    """The fields of a PIL `Image.Exif`."""
    sub = _ifd(exif, _EXIF_IFD)
    gps = _ifd(exif, _GPS_IFD)
    lat, lon = _coordinate(gps, _GPS_LAT, _GPS_LAT_REF, "S"), _coordinate(gps, _GPS_LON, _GPS_LON_REF, "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        lat = lon = None  # (0, 0) is what cameras write when they had no fix
    return PhotoExif(
        time=_time(sub.get(_DATETIME_ORIGINAL) or _get(exif, _DATETIME)),
        camera_make=_text(_get(exif, _MAKE)),
        camera_model=_text(_get(exif, _MODEL)),
        lens=_text(sub.get(_LENS_MODEL)) or _text(sub.get(_LENS_MAKE)),
        gps_lat=lat, gps_lon=lon,
        gps_alt=_altitude(gps) if lat is not None else None,
    )


def _ifd(exif: Any, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # noqa: BLE001
        return {}


def _get(exif: Any, tag: int) -> Any:
    try:
        return exif.get(tag)
    except Exception:  # noqa: BLE001
        return None


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    text = " ".join(str(raw).replace("\x00", " ").split())[:MAX_TEXT]
    return text or None


def _time(raw: Any) -> int | None:
    text = _text(raw)
    if not text:
        return None
    try:
        moment = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
        return int(moment.replace(tzinfo=timezone.utc).timestamp())
    except (ValueError, OverflowError):
        return None


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) else None


def _coordinate(gps: dict, tag: int, ref_tag: int, negative: str) -> float | None:
    value = gps.get(tag)
    if value is None:
        return None
    parts = [_number(p) for p in (value if isinstance(value, (tuple, list)) else (value,))]
    if not parts or any(p is None for p in parts):
        return None
    degrees = sum(p / 60 ** i for i, p in enumerate(parts[:3]))  # type: ignore[operator]
    ref = _text(gps.get(ref_tag)) or ""
    return -degrees if ref.upper().startswith(negative) else degrees


def _altitude(gps: dict) -> float | None:
    alt = _number(gps.get(_GPS_ALT))
    if alt is None:
        return None
    ref = gps.get(_GPS_ALT_REF)
    below = ref in (1, b"\x01") or (isinstance(ref, bytes) and ref[:1] == b"\x01")
    return -alt if below else alt
