"""Read, hash, decode and preprocess files in worker processes with a bounded read-ahead."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ..models.exif import PhotoExif
from ..models.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..models.spec import PreprocessConfig
from .scan import FileEntry


@dataclass(frozen=True)
class DecodeOptions:
    preprocess: PreprocessConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True


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


def decode_file(entry: FileEntry, options: DecodeOptions) -> Decoded:
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
    try:
        img = decode_image(data, options.preprocess, options.max_pixels, options.draft)
    except ImageDecodeError as e:
        return Decoded(entry, content_hash=digest, error=str(e))
    return Decoded(entry, digest, img.pixels, img.width, img.height, img.format, img.exif)


def _decode_chunk(entries: list[FileEntry], options: DecodeOptions) -> list[Decoded]:
    return [decode_file(e, options) for e in entries]


def decode_stream(
    entries: Iterable[FileEntry], options: DecodeOptions, workers: int, chunk: int = 8,
    read_ahead: int = 4,
) -> Iterator[Decoded]:
    """Decoded files in completion order. At most `workers * read_ahead` chunks are in flight,
    so memory stays bounded however large the collection. `workers=0` decodes in-process."""
    if workers <= 0:
        for e in entries:
            yield decode_file(e, options)
        return
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    limit = workers * read_ahead
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
