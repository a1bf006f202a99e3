"""Which files and folders under an indexed root are never indexed: built-in skips of what is never
a photo library, the root's `.llm2searchignore` (gitignore syntax) and `--exclude` patterns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputPathError

IGNORE_FILE = ".llm2searchignore"
# Folders that hold no photos of the library: NAS thumbnail and index folders, version control,
# package trees, recycle bins, OS metadata. Matched by name at any depth.
DEFAULT_SKIP_DIRS = frozenset({
    "@eaDir",  # Synology thumbnails
    "#recycle", "#snapshot", "@Recycle", "@Recently-Snapshot",  # Synology / QNAP bins, snapshots
    ".@__thumb",  # QNAP thumbnails
    "$RECYCLE.BIN", "System Volume Information",  # Windows
    "__MACOSX",  # zip leftovers of macOS resource forks
    "lost+found",
    ".git", ".hg", ".svn", "node_modules", "__pycache__",
    ".thumbnails", ".thumbs", ".cache", ".Trash", ".Trashes", ".AppleDouble", ".Spotlight-V100",
    ".fseventsd", ".picasaoriginals",
})


@dataclass(frozen=True)
class ExcludeConfig:
    patterns: tuple[str, ...] = ()  # gitignore-style, relative to the indexed root (--exclude)
    defaults: bool = True  # skip DEFAULT_SKIP_DIRS and every dot-file and dot-folder
    ignore_file: bool = True  # read <root>/.llm2searchignore


class ExcludeRules:
    """`excluded(path, is_dir)` for paths under one root."""

    def __init__(self, root: str | Path, config: ExcludeConfig = ExcludeConfig()):
        import pathspec

        self.root = os.path.abspath(os.fspath(root))
        self.config = config
        lines = list(config.patterns)
        ignore = Path(self.root) / IGNORE_FILE
        if config.ignore_file and ignore.is_file():
            try:
                lines += ignore.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as e:
                raise InputPathError(f"cannot read {ignore}: {e.strerror or e}") from e
        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        except Exception as e:  # noqa: BLE001 - pathspec raises several types for a bad pattern
            raise InputPathError(f"bad exclude pattern: {e}") from e

    def excluded(self, path: str, is_dir: bool) -> bool:
        """True when `path` (absolute, under the root) is not to be indexed."""
        name = os.path.basename(path)
        if self.config.defaults and (name.startswith(".") or (is_dir and name in DEFAULT_SKIP_DIRS)):
            return True
        if self._spec is None:
            return False
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".."):
            return False
        rel = rel.replace(os.sep, "/")
        return bool(self._spec.match_file(rel + "/" if is_dir else rel))

    def excluded_below_root(self, path: str) -> bool:
        """True when `path` or any folder between the root and it is excluded (watch events
        name single files, not the walk that would have pruned their folder)."""
        rel = os.path.relpath(path, self.root)
        if rel == "." or rel.startswith(".."):
            return False
        parts = rel.split(os.sep)
        at = self.root
        for i, part in enumerate(parts):
            at = os.path.join(at, part)
            if self.excluded(at, is_dir=i < len(parts) - 1):
                return True
        return False
