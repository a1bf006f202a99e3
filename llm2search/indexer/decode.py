"""Read, hash, decode and preprocess files in worker processes with a bounded read-ahead."""

from __future__ import annotations

import atexit
import hashlib
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from ..models.exif import PhotoExif
from ..models.gpu_preprocess import JpegHeader, jpeg_header
from ..models.preprocess import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from ..models.spec import PreprocessConfig
from .decode_worker import WorkerPool
from .scan import FileEntry, file_kind


DEFAULT_MAX_FILE_BYTES = 1 << 30  # 1 GiB: larger files are recorded as errors, never read
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class DecodeOptions:
    preprocess: PreprocessConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    draft: bool = True
    max_file_bytes: int | None = DEFAULT_MAX_FILE_BYTES
    log_path: str | None = None  # where decoder libraries' own messages go (libtiff, libjpeg, ...)
    gpu_jpeg: bool = False  # JPEGs the GPU can decode are passed on undecoded (indexer/gpu_decode.py)


class _NativeStderr:
    """C libraries (libtiff above all) print warnings and errors straight to file descriptor 2,
    around Python. While a file is decoded, fd 2 points at a scratch file; whatever landed there
    is appended to the log with the file's name, so the terminal shows only llm2search's own
    output. One scratch file per process, reused, closed when the process exits."""

    def __init__(self) -> None:
        self._scratch = tempfile.TemporaryFile()
        atexit.register(self._scratch.close)

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
    """Hash and decode one file, streaming: never more than a block of the file in memory
    beyond what the decoder itself holds. Anything but a regular file is refused unopened
    (a FIFO would block the read forever, a device would never end)."""
    global _native
    if options.log_path is None:
        return _decode_file(entry, options)
    if _native is None:
        _native = _NativeStderr()
    return _native.run(entry.path, options.log_path, lambda: _decode_file(entry, options))


def _decode_file(entry: FileEntry, options: DecodeOptions) -> Decoded:
    try:
        fh = open_regular(entry.path, options.max_file_bytes)
    except FileNotFoundError:
        return Decoded(entry, error="file disappeared while indexing")
    except InputRefused as e:
        return Decoded(entry, error=str(e))
    except OSError as e:
        return Decoded(entry, error=f"cannot read file: {e.strerror or e}")
    with fh:
        try:
            digest, size = _hash(fh, options.max_file_bytes)
        except InputRefused as e:
            return Decoded(entry, error=str(e))
        except OSError as e:
            return Decoded(entry, error=f"cannot read file: {e.strerror or e}")
        if size == 0:
            return Decoded(entry, error="empty file (0 bytes)")
        fh.seek(0)
        if options.gpu_jpeg and fh.read(3) == b"\xff\xd8\xff":
            # The GPU decodes the whole file: only a JPEG (at most max_file_bytes) is read into memory.
            fh.seek(0)
            data = fh.read()
            header = jpeg_header(data, options.max_pixels)
            if header is not None:
                width, height = header.display_size
                return Decoded(entry, digest, None, width, height, "JPEG", header.exif, jpeg=data, header=header)
        try:
            fh.seek(0)
            img = decode_image(fh, options.preprocess, options.max_pixels, options.draft)
        except ImageDecodeError as e:
            return Decoded(entry, content_hash=digest, error=str(e))
        except OSError as e:
            return Decoded(entry, content_hash=digest, error=f"cannot read file: {e.strerror or e}")
    return Decoded(entry, digest, img.pixels, img.width, img.height, img.format, img.exif)


class InputRefused(Exception):
    """A file that is not opened or not read to the end; the message is the recorded reason."""


def open_regular(path: str, max_bytes: int | None = None) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (of at most `max_bytes`). O_NONBLOCK
    makes opening a FIFO return at once instead of waiting for a writer."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused(f"not a regular file ({file_kind(st.st_mode)}): not read")
        if max_bytes is not None and st.st_size > max_bytes:
            raise InputRefused(too_big(st.st_size, max_bytes))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def too_big(size: int, limit: int) -> str:
    return (f"file is {size:,} bytes, over the --max-file-bytes limit of {limit:,} "
            "(raise it if the file is genuine)")


def _hash(fh: BinaryIO, limit: int | None) -> tuple[str, int]:
    h = hashlib.blake2b(digest_size=16)
    size = 0
    for block in iter(lambda: fh.read(HASH_BLOCK), b""):
        size += len(block)
        if limit is not None and size > limit:  # it grew after the size check
            raise InputRefused(too_big(size, limit))
        h.update(block)
    return h.hexdigest(), size


def _decode_chunk(entries: list[FileEntry], options: DecodeOptions) -> list[Decoded]:
    return [decode_file(e, options) for e in entries]


def decode_stream(
    entries: Iterable[FileEntry], options: DecodeOptions, workers: int, chunk: int = 8,
    read_ahead: int = 4, min_in_flight: int = 0,
) -> Iterator[Decoded]:
    """Decoded files in completion order. At most `workers * read_ahead` chunks are in flight,
    or enough chunks for `min_in_flight` files (one model batch) if that is more, so memory stays
    bounded however large the collection. `workers=0` decodes in-process.

    Workers are plain child processes running this module's worker loop (decode_worker.py),
    not a multiprocessing pool: they never import the parent's __main__ (a script without an
    `if __name__ == "__main__"` guard works), they die with the parent even after kill -9
    (stdin EOF, and PR_SET_PDEATHSIG on Linux), and a decoder that crashes its worker costs
    only the file that crashed it: the chunk is retried file by file in a fresh worker."""
    if workers <= 0:
        for e in entries:
            yield decode_file(e, options)
        return
    with WorkerPool(workers, _decode_chunk, (options,), _crashed) as pool:
        yield from pool.run(entries, chunk, read_ahead, min_in_flight)


def _crashed(entry: FileEntry, code: int) -> Decoded:
    return Decoded(entry, error=f"the image decoder crashed on this file (exit status {code})")


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1)) if (os.cpu_count() or 1) > 1 else 0
