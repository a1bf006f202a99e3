"""Read, hash, decode and preprocess files in worker processes with a bounded read-ahead."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ..models.exif import PhotoExif
from ..models.gpu_preprocess import JpegHeader, jpeg_header
from ..models.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..models.spec import PreprocessConfig
from .scan import FileEntry


@dataclass(frozen=True)
class DecodeOptions:
    preprocess: PreprocessConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True
    log_path: str | None = None  # where decoder libraries' own messages go (libtiff, libjpeg, ...)
    gpu_jpeg: bool = False  # JPEGs the GPU can decode are passed on undecoded (indexer/gpu_decode.py)


class _NativeStderr:
    """C libraries (libtiff above all) print warnings and errors straight to file descriptor 2,
    around Python. While a file is decoded, fd 2 points at a scratch file; whatever landed there
    is appended to the log with the file's name, so the terminal shows only llm2search's own
    output. One scratch file per process, reused."""

    def __init__(self) -> None:
        self._scratch = tempfile.TemporaryFile()

    def run(self, path: str, log_path: str, job):  # type: ignore[no-untyped-def]
        sys.stderr.flush()
        self._scratch.seek(0)
        self._scratch.truncate()
        saved = os.dup(2)
        os.dup2(self._scratch.fileno(), 2)
        try:
            return job()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            self._scratch.seek(0)
            text = self._scratch.read().decode("utf-8", "replace").strip()
            if text:
                _append_log(log_path, path, text)


_native: _NativeStderr | None = None


def _append_log(log_path: str, path: str, text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    lines = "".join(f"{stamp} {path}: {line}\n" for line in text.splitlines() if line.strip())
    try:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a", encoding="utf-8", errors="replace") as fh:  # O_APPEND: whole lines
            fh.write(lines)
    except OSError:
        pass  # a log that cannot be written must not fail indexing


@dataclass
class Decoded:
    entry: FileEntry
    content_hash: str | None = None
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    exif: PhotoExif = PhotoExif()
    error: str | None = None  # set when the file could not be used
    jpeg: bytes | None = None  # with gpu_jpeg: the file, to be decoded on the GPU (pixels None)
    header: JpegHeader | None = None


def decode_file(entry: FileEntry, options: DecodeOptions) -> Decoded:
    global _native
    if options.log_path is None:
        return _decode_file(entry, options)
    if _native is None:
        _native = _NativeStderr()
    return _native.run(entry.path, options.log_path, lambda: _decode_file(entry, options))


def _decode_file(entry: FileEntry, options: DecodeOptions) -> Decoded:
    try:
        with open(entry.path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Decoded(entry, error="file disappeared while indexing")
    except OSError as e:
        return Decoded(entry, error=f"cannot read file: {e.strerror or e}")
    if not data:
        return Decoded(entry, error="empty file (0 bytes)")
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    header = jpeg_header(data, options.max_pixels) if options.gpu_jpeg else None
    if header is not None:
        width, height = header.display_size
        return Decoded(entry, digest, None, width, height, "JPEG", header.exif, jpeg=data, header=header)
    try:
        img = decode_image(data, options.preprocess, options.max_pixels, options.draft)
    except ImageDecodeError as e:
        return Decoded(entry, content_hash=digest, error=str(e))
    return Decoded(entry, digest, img.pixels, img.width, img.height, img.format, img.exif)


def _decode_chunk(entries: list[FileEntry], options: DecodeOptions) -> list[Decoded]:
    return [decode_file(e, options) for e in entries]


def decode_stream(
    entries: Iterable[FileEntry], options: DecodeOptions, workers: int, chunk: int = 8,
    read_ahead: int = 4, min_in_flight: int = 0,
) -> Iterator[Decoded]:
    """Decoded files in completion order. At most `workers * read_ahead` chunks are in flight,
    or enough chunks for `min_in_flight` files (one model batch) if that is more, so memory stays
    bounded however large the collection. `workers=0` decodes in-process."""
    if workers <= 0:
        for e in entries:
            yield decode_file(e, options)
        return
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    limit = max(workers * read_ahead, -(-min_in_flight // chunk))
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(method)) as pool:
        pending: set[Future] = set()
        batch: list[FileEntry] = []
        source = iter(entries)
        exhausted = False
        while True:
            while not exhausted and len(pending) < limit:
                batch = [e for _, e in zip(range(chunk), source)]
                if not batch:
                    exhausted = True
                    break
                pending.add(pool.submit(_decode_chunk, batch, options))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield from fut.result()


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1)) if (os.cpu_count() or 1) > 1 else 0
