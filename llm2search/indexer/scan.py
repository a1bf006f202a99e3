"""Walk a photo folder: image files by extension, symlinks followed once, problems reported."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .exclude import ExcludeRules

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff",
    ".heic", ".heif", ".avif", ".jxl", ".mpo",
    ".dng", ".cr2", ".nef", ".arw",  # camera RAW: TIFF containers with an embedded preview
})


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute; os.fsdecode form, so non-UTF-8 names survive (surrogate escapes)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str


def scan(root: Path, rules: ExcludeRules | None = None) -> Iterator[FileEntry | ScanProblem]:
    """Yield image files under `root` (or `root` itself), sorted per directory for stable order,
    leaving out what `rules` exclude (default: the built-in skips and the root's ignore file).
    Directory symlinks are followed once per real directory, so loops end."""
    root = Path(os.path.abspath(root))
    if root.is_file():
        entry = _stat_entry(str(root))
        if entry is not None:
            yield entry
        return
    if rules is None:
        rules = ExcludeRules(root)
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield ScanProblem(directory, f"cannot read directory: {e.strerror or e}")
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=True):
                    if not rules.excluded(e.path, is_dir=True):
                        subdirs.append(e.path)
                    continue
            except OSError as err:
                if not rules.excluded(e.path, is_dir=False):
                    yield ScanProblem(e.path, _stat_problem(e, err))
                continue
            if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS or rules.excluded(e.path, is_dir=False):
                continue
            try:
                st = e.stat(follow_symlinks=True)
            except OSError as err:
                yield ScanProblem(e.path, _stat_problem(e, err))
                continue
            if stat.S_ISREG(st.st_mode):
                yield FileEntry(e.path, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def _stat_problem(entry: os.DirEntry, err: OSError) -> str:
    if entry.is_symlink():
        return "symlink loop" if err.errno == errno.ELOOP else "broken symlink"
    return f"cannot stat: {err.strerror or err}"


def _stat_entry(path: str) -> FileEntry | None:
    st = os.stat(path)
    return FileEntry(path, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
