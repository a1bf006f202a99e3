"""File names in Parquet: strings must be UTF-8, file names need not be. A name that is not UTF-8
is stored readable (undecodable bytes as \\xNN) with its exact bytes beside it."""

from __future__ import annotations

import os


def to_stored(path: str) -> tuple[str, bytes | None]:
    """(display path, raw bytes or None when the name is valid UTF-8)."""
    try:
        path.encode("utf-8")
        return path, None
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return raw.decode("utf-8", "backslashreplace"), raw


def display(path: str) -> str:
    return to_stored(path)[0]


def from_stored(path: str, raw: bytes | None) -> str:
    """The name to open the file with."""
    return os.fsdecode(raw) if raw else path
