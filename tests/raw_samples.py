"""Camera RAW test files made here, laid out as the cameras lay them out (TIFF containers): DNG
(preview in a SubIFD, CFA sensor data), CR2 ("CR" header, full-size JPEG in IFD0's strip, lossless
sensor JPEG in IFD3), NEF (160x120 RGB thumbnail in IFD0, JPEG preview and CFA data in SubIFDs),
ARW (JPEG preview in IFD0 via JPEGInterchangeFormat, CFA data in a SubIFD). The sensor data is
synthetic; the previews are real JPEGs, so the expected decoded pixels are known exactly."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 1, 2, 3, 4, 5, 7
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1}


class Tiff:
    """A little-endian TIFF assembled bottom-up: blobs and child IFDs first, IFD0 last."""

    def __init__(self, cr2: bool = False):
        self.buf = bytearray(b"II*\x00" + b"\x00" * 4)
        if cr2:  # Canon's header: "CR", version 2.0, offset of the raw IFD
            self.buf += b"CR\x02\x00" + b"\x00" * 4
        self.cr2 = cr2

    def blob(self, data: bytes) -> int:
        self._align()
        at = len(self.buf)
        self.buf += data
        return at

    def ifd(self, entries: list[tuple[int, int, Any]], next_ifd: int = 0) -> int:
        encoded = []
        for tag, typ, value in sorted(entries, key=lambda e: e[0]):
            raw, count = _encode(typ, value)
            if len(raw) > 4:
                raw = struct.pack("<I", self.blob(raw))
            encoded.append(struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\x00"))
        self._align()
        at = len(self.buf)
        self.buf += struct.pack("<H", len(encoded)) + b"".join(encoded) + struct.pack("<I", next_ifd)
        return at

    def finish(self, ifd0: int, raw_ifd: int = 0) -> bytes:
        struct.pack_into("<I", self.buf, 4, ifd0)
        if self.cr2:
            struct.pack_into("<I", self.buf, 12, raw_ifd)
        return bytes(self.buf)

    def _align(self) -> None:
        if len(self.buf) % 2:
            self.buf += b"\x00"


def _encode(typ: int, value: Any) -> tuple[bytes, int]:
    if typ == ASCII:
        data = value.encode() + b"\x00"
        return data, len(data)
    if typ in (BYTE, UNDEFINED):
        return bytes(value), len(value)
    values = value if isinstance(value, (list, tuple)) else [value]
    if typ == SHORT:
        return struct.pack(f"<{len(values)}H", *values), len(values)
    if typ == LONG:
        return struct.pack(f"<{len(values)}I", *values), len(values)
    if typ == RATIONAL:
        return b"".join(struct.pack("<II", n, d) for n, d in values), len(values)
    raise ValueError(typ)


def preview_jpeg(seed: int, size: tuple[int, int] = (480, 320)) -> bytes:
    """A JPEG "as rendered by the camera": a smooth random colour layout."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(4, 6, 3)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR).save(out, "JPEG", quality=90)
    return out.getvalue()


def _rgb_strip(seed: int, w: int, h: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8).tobytes()


def _cfa(w: int, h: int, seed: int) -> bytes:
    """16-bit Bayer (RGGB) sensor data: a smooth scene sampled through the colour filter."""
    rng = np.random.default_rng(seed)
    base = rng.integers(500, 3500, size=(h // 2, w // 2, 3)).astype(np.uint16)
    mosaic = np.zeros((h, w), dtype=np.uint16)
    mosaic[0::2, 0::2] = base[..., 0]
    mosaic[0::2, 1::2] = base[..., 1]
    mosaic[1::2, 0::2] = base[..., 1]
    mosaic[1::2, 1::2] = base[..., 2]
    return mosaic.astype("<u2").tobytes()


def _exif_ifd(t: Tiff, lens: str, when: str) -> int:
    return t.ifd([(36867, ASCII, when), (0xA434, ASCII, lens)])


def _gps_ifd(t: Tiff, lat: float, lon: float) -> int:
    def dms(x: float) -> list[tuple[int, int]]:
        x = abs(x)
        d = int(x)
        m = int((x - d) * 60)
        s = round(((x - d) * 60 - m) * 60 * 1000)
        return [(d, 1), (m, 1), (s, 1000)]

    return t.ifd([(0, BYTE, b"\x02\x03\x00\x00"), (1, ASCII, "N" if lat >= 0 else "S"), (2, RATIONAL, dms(lat)),
                  (3, ASCII, "E" if lon >= 0 else "W"), (4, RATIONAL, dms(lon))])


def _cfa_ifd(t: Tiff, w: int, h: int, seed: int, compression: int = 1) -> int:
    data = _cfa(w, h, seed)
    at = t.blob(data)
    return t.ifd([
        (254, LONG, 0), (256, LONG, w), (257, LONG, h), (258, SHORT, 16), (259, SHORT, compression),
        (262, SHORT, 32803), (273, LONG, at), (277, SHORT, 1), (278, LONG, h), (279, LONG, len(data)),
        (33421, SHORT, [2, 2]), (33422, BYTE, b"\x00\x01\x01\x02"),
        (50710, BYTE, b"\x00\x01\x02"), (50717, LONG, 4095),  # CFAPlaneColor, WhiteLevel
    ])


def dng(preview: bytes | None, seed: int = 0, make: str = "Canon", model: str = "Canon EOS R5",
        lens: str = "RF24-105mm F4 L IS USM", gps: tuple[float, float] | None = (48.8584, 2.2945)) -> bytes:
    """A DNG: small RGB thumbnail in IFD0, JPEG preview (when given) and CFA data in SubIFDs."""
    t = Tiff()
    raw = _cfa_ifd(t, 128, 96, seed)
    subs = [raw]
    if preview is not None:
        at = t.blob(preview)
        subs.insert(0, t.ifd([(254, LONG, 1), (256, LONG, 480), (257, LONG, 320), (258, SHORT, [8, 8, 8]),
                              (259, SHORT, 7), (262, SHORT, 6), (273, LONG, at), (277, SHORT, 3),
                              (278, LONG, 320), (279, LONG, len(preview))]))
    thumb = t.blob(_rgb_strip(seed + 1, 32, 24))
    entries = [
        (254, LONG, 1), (256, LONG, 32), (257, LONG, 24), (258, SHORT, [8, 8, 8]), (259, SHORT, 1),
        (262, SHORT, 2), (271, ASCII, make), (272, ASCII, model), (273, LONG, thumb), (274, SHORT, 1),
        (277, SHORT, 3), (278, LONG, 24), (279, LONG, 32 * 24 * 3), (330, LONG, subs),
        (0x8769, LONG, _exif_ifd(t, lens, "2022:06:01 12:00:00")),
        (50706, BYTE, b"\x01\x04\x00\x00"), (50708, ASCII, model),
        (50721, RATIONAL, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),  # ColorMatrix1
        (50778, SHORT, 21),  # CalibrationIlluminant1: D65
    ]
    if gps is not None:
        entries.append((0x8825, LONG, _gps_ifd(t, *gps)))
    return t.finish(t.ifd(entries))


def cr2(preview: bytes, seed: int = 0) -> bytes:
    """A CR2: IFD0 = full-size JPEG as one strip (old-style JPEG compression 6), IFD1 = small
    JPEG thumbnail, IFD2 = small RGB, IFD3 = lossless-JPEG sensor data (not decodable here)."""
    t = Tiff(cr2=True)
    lossless = b"\xff\xd8\xff\xc3\x00\x0b\x0e\x00\x60\x00\x80\x01\x01\x11\x00" + bytes(256) + b"\xff\xd9"
    at3 = t.blob(lossless)
    ifd3 = t.ifd([(259, SHORT, 6), (273, LONG, at3), (279, LONG, len(lossless)), (50752, SHORT, [1, 2, 2])])
    at2 = t.blob(_rgb_strip(seed + 2, 40, 30))
    ifd2 = t.ifd([(256, LONG, 40), (257, LONG, 30), (258, SHORT, [8, 8, 8]), (259, SHORT, 1),
                  (262, SHORT, 2), (273, LONG, at2), (277, SHORT, 3), (278, LONG, 30), (279, LONG, 3600)], ifd3)
    small = preview_jpeg(seed + 3, (160, 120))
    at1 = t.blob(small)
    ifd1 = t.ifd([(259, SHORT, 6), (513, LONG, at1), (514, LONG, len(small))], ifd2)
    at0 = t.blob(preview)
    ifd0 = t.ifd([(256, LONG, 480), (257, LONG, 320), (259, SHORT, 6), (271, ASCII, "Canon"),
                  (272, ASCII, "Canon EOS 5D Mark IV"), (273, LONG, at0), (274, SHORT, 1),
                  (279, LONG, len(preview)), (0x8769, LONG, _exif_ifd(t, "EF24-70mm f/2.8L II USM", "2021:03:04 05:06:07"))],
                 ifd1)
    return t.finish(ifd0, ifd3)


def nef(preview: bytes, seed: int = 0, orientation: int = 1) -> bytes:
    """A NEF: IFD0 = 160x120 RGB thumbnail; SubIFDs = JPEG preview, CFA sensor data."""
    t = Tiff()
    raw = _cfa_ifd(t, 128, 96, seed, compression=34713)
    at = t.blob(preview)
    jpeg_ifd = t.ifd([(254, LONG, 1), (259, SHORT, 6), (513, LONG, at), (514, LONG, len(preview))])
    thumb = t.blob(_rgb_strip(seed + 4, 160, 120))
    ifd0 = t.ifd([(254, LONG, 1), (256, LONG, 160), (257, LONG, 120), (258, SHORT, [8, 8, 8]), (259, SHORT, 1),
                  (262, SHORT, 2), (271, ASCII, "NIKON CORPORATION"), (272, ASCII, "NIKON Z 6"),
                  (273, LONG, thumb), (274, SHORT, orientation), (277, SHORT, 3), (278, LONG, 120),
                  (279, LONG, 160 * 120 * 3), (330, LONG, [jpeg_ifd, raw]),
                  (0x8769, LONG, _exif_ifd(t, "NIKKOR Z 24-70mm f/4 S", "2020:01:02 03:04:05"))])
    return t.finish(ifd0)


def arw(preview: bytes, seed: int = 0) -> bytes:
    """An ARW: IFD0 points at the JPEG preview (JPEGInterchangeFormat); the CFA data is a SubIFD."""
    t = Tiff()
    raw = _cfa_ifd(t, 128, 96, seed, compression=32767)
    at = t.blob(preview)
    ifd0 = t.ifd([(254, LONG, 1), (259, SHORT, 6), (271, ASCII, "SONY"), (272, ASCII, "ILCE-7M3"),
                  (274, SHORT, 1), (330, LONG, [raw]), (513, LONG, at), (514, LONG, len(preview)),
                  (0x8769, LONG, _exif_ifd(t, "FE 24-105mm F4 G OSS", "2019:08:09 10:11:12"))])
    return t.finish(ifd0)
