"""Exclusions: built-in skips (dot-files, @eaDir, .git, node_modules, thumbnail caches), the root's
.llm2searchignore and --exclude; what a rule newly excludes is dropped from the index on the next run."""

from __future__ import annotations

import shutil
from pathlib import Path

from llm2search.indexer.exclude import DEFAULT_SKIP_DIRS, ExcludeConfig, ExcludeRules
from llm2search.indexer.scan import FileEntry, scan
from tests.cli_helpers import indexed_paths, ok_json
from tests.conftest import make_photos


def _library(root: Path) -> dict[str, Path]:
    """Photos where a library keeps them, and copies where a NAS, git or a viewer keeps theirs."""
    src = make_photos(root / "_src", 6, seed=3)
    places = {
        "keep": root / "2023" / "a.jpg", "keep2": root / "2024" / "trip" / "b.png",
        "private": root / "Private" / "c.jpg", "tmp": root / "2024" / "d.tmp.jpg",
        "eadir": root / "2023" / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_XL.jpg",
        "git": root / ".git" / "e.jpg", "modules": root / "site" / "node_modules" / "pkg" / "f.png",
        "thumbs": root / ".thumbnails" / "normal" / "g.png", "dotfile": root / "2023" / "._a.jpg",
        "hidden": root / ".hidden" / "h.jpg",
    }
    for i, (_, path) in enumerate(places.items()):
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src[i % len(src)], path)
    shutil.rmtree(root / "_src")
    return places


def _scanned(root: Path, config: ExcludeConfig = ExcludeConfig()) -> set[str]:
    return {e.path for e in scan(root, ExcludeRules(root, config)) if isinstance(e, FileEntry)}


def test_default_skips_ignore_file_and_patterns(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    p = _library(root)
    assert _scanned(root) == {str(p[k]) for k in ("keep", "keep2", "private", "tmp")}
    assert _scanned(root, ExcludeConfig(patterns=("Private/", "*.tmp.jpg"))) == {str(p["keep"]), str(p["keep2"])}
    (root / ".llm2searchignore").write_text("# comments and blank lines are fine\n\n/2024/trip\n*.tmp.jpg\n")
    assert _scanned(root) == {str(p["keep"]), str(p["private"])}
    everything = _scanned(root, ExcludeConfig(defaults=False, ignore_file=False))
    assert everything == {str(v) for v in p.values()}
    assert {"@eaDir", ".git", "node_modules", ".thumbnails"} <= DEFAULT_SKIP_DIRS


def test_cli_exclude_then_ignore_file_drops_indexed_files(tiny_model: Path, tmp_path: Path) -> None:
    root, index = tmp_path / "lib", tmp_path / "index"
    p = _library(root)
    report = ok_json("index", root, "--index", index, "--model", tiny_model, "--json", "--workers", "0")
    assert report["new"] == 4 and report["failed"] == 0
    assert indexed_paths(index) == {str(p[k]) for k in ("keep", "keep2", "private", "tmp")}

    # A new --exclude drops what it matches on this run (counted as deleted).
    report = ok_json("index", root, "--index", index, "--json", "--workers", "0",
                     "--exclude", "Private/", "--exclude", "*.tmp.jpg")
    assert report["deleted"] == 2 and report["new"] == 0 and report["embedded"] == 0
    assert indexed_paths(index) == {str(p["keep"]), str(p["keep2"])}

    # Without the flag they come back; the ignore file is the way to make an exclusion stick.
    report = ok_json("index", root, "--index", index, "--json", "--workers", "0")
    assert report["new"] == 2
    (root / ".llm2searchignore").write_text("Private/\n2024/\n")
    report = ok_json("index", root, "--index", index, "--json", "--workers", "0")
    assert report["deleted"] == 3
    assert indexed_paths(index) == {str(p["keep"])}
    hits = ok_json("query", "anything", "--index", index, "--json", "-k", "10")
    assert [h["path"] for h in hits] == [str(p["keep"])]

    # --no-default-excludes indexes the NAS thumbnails and dot-files too.
    report = ok_json("index", root, "--index", index, "--json", "--workers", "0", "--no-default-excludes")
    assert report["new"] == 6  # eadir, git, node_modules, .thumbnails, ._a.jpg, .hidden (ignore file still applies)
