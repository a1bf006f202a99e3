"""Walk a photo folder: image files by extension, symlinks followed once, problems reported."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..store.shard import storable_ns
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


def scan(root: Path, rules: ExcludeRules | None = None,
         linked: set[str] | None = None) -> Iterator[FileEntry | ScanProblem]:
    """Yield image files under `root` (or `root` itself), sorted per directory for stable order,
    leaving out what `rules` exclude (default: the built-in skips and the root's ignore file).
    Directory symlinks are followed once per real directory, so loops end; the real folders
    they lead to are added to `linked` (files there are served like files under `root`)."""
    root = Path(os.path.abspath(root))
    if os.path.lexists(root) and not root.is_dir():
        found = scan_path(str(root))
        if found is not None:
            yield found
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
                        if linked is not None and e.is_symlink():
                            linked.add(os.path.realpath(e.path))
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
                yield FileEntry(e.path, st.st_size, storable_ns(st.st_mtime_ns))
            else:  # never opened: a FIFO would block the run, a device would never end
                yield ScanProblem(e.path, f"not a regular file ({file_kind(st.st_mode)}): not read")
        stack.extend(reversed(subdirs))


def _stat_problem(entry: os.DirEntry, err: OSError) -> str:
    if entry.is_symlink():
        return "symlink loop" if err.errno == errno.ELOOP else "broken symlink"
    return f"cannot stat: {err.strerror or err}"


def scan_path(path: str) -> FileEntry | ScanProblem | None:
    """One path that is not a folder, judged as the walk judges a file: None when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ScanProblem(path, "broken symlink") if os.path.islink(path) else None
    except OSError as err:
        return ScanProblem(path, "symlink loop" if err.errno == errno.ELOOP else f"cannot stat: {err.strerror or err}")
    if stat.S_ISREG(st.st_mode):
        return FileEntry(path, st.st_size, storable_ns(st.st_mtime_ns))
    return ScanProblem(path, f"not a regular file ({file_kind(st.st_mode)}): not read")


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a plain file"
