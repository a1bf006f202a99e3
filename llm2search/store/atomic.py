"""Durable writes: temp file, fsync, rename, fsync the directory. Readers see old or new, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)`, fsync it, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
