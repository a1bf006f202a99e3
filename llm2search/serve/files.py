"""Opening an indexed photo for /image and /thumbnail: only a regular file whose real path lies
under a folder the index was built from, and only while it is still the photo that was indexed
(same size and mtime, else the same content hash). A symlink swapped in after indexing, a file
replaced by another, or a path that now leads outside the indexed folders is never served."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, BinaryIO, Iterable

from ..errors import ItemNotFoundError
from ..store.shard import storable_ns

HASH_BLOCK = 1 << 20


def open_indexed(path: str, item: dict[str, Any], roots: Iterable[str]) -> BinaryIO:
    """The open file of an indexed item, checked as the module docstring says."""
    real = os.path.realpath(path)
    roots = [r for r in roots if r]
    if roots:
        if not any(_under(real, r) for r in roots):
            raise ItemNotFoundError("the photo's path now leads outside the indexed folders; not served")
    elif real != os.path.normpath(path):  # an index written before roots were recorded
        raise ItemNotFoundError("the photo's path now goes through a symbolic link; not served (reindex)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError as e:
        raise ItemNotFoundError("the photo is no longer on disk (reindex to update)") from e
    except OSError as e:
        raise ItemNotFoundError(f"the photo cannot be opened: {e.strerror or e}") from e
    fh = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ItemNotFoundError("the photo's path is no longer a regular file; not served")
        unchanged = (st.st_size, storable_ns(st.st_mtime_ns)) == (item["size"], item["mtime_ns"])
        if not unchanged and not _same_content(fh, str(item["content_hash"])):
            raise ItemNotFoundError("the file is not the photo that was indexed any more (reindex to update)")
    except BaseException:
        fh.close()
        raise
    return fh


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/\\") or root
    return path == root or path.startswith(root + os.sep) or (root.endswith(os.sep) and path.startswith(root))


def _same_content(fh: BinaryIO, digest: str) -> bool:
    h = hashlib.blake2b(digest_size=16)
    for block in iter(lambda: fh.read(HASH_BLOCK), b""):
        h.update(block)
    fh.seek(0)
    return h.hexdigest() == digest
