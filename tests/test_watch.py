"""`llm2search watch` as a real process on real file-system events: new, changed, moved and deleted
files reach the index in debounced batches; excluded paths never do; after `kill -9` a restart
catches up with what changed meanwhile, one live entry per file. Every wait is bounded and polls
the committed index (no sleep is an assertion)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.conftest import live_rows, make_photos, rewrite_photo

DEADLINE = 90.0  # seconds; generous for a shared machine


def _start(folder: Path, index: Path, model: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llm2search.cli", "watch", str(folder), "--index", str(index), "--model", str(model),
         "--device", "cpu", "--debounce", "0.3", "--max-delay", "5", "--workers", "0"],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _until(what: str, check: Callable[[], bool], proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (FileNotFoundError, ValueError, OSError):
            pass  # no index yet, or a commit in progress
        if proc.poll() is not None:
            raise AssertionError(f"watch exited ({proc.returncode}) waiting for {what}: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-2000:]}")


def _paths(index: Path) -> list[str]:
    return sorted(p for p, _ in live_rows(index))


def test_watch_follows_changes_and_resumes_after_kill(tiny_model: Path, tmp_path: Path) -> None:
    folder, index, log = tmp_path / "photos", tmp_path / "index", tmp_path / "watch.log"
    files = make_photos(folder, 6, seed=21)
    spare = make_photos(tmp_path / "spare", 4, seed=22)
    proc = _start(folder, index, tiny_model, log)
    try:
        _until("the first pass", lambda: "watching" in log.read_text(), proc, log)
        assert _paths(index) == sorted(map(str, files))

        new = folder / "new" / "a.jpg"
        new.parent.mkdir()
        shutil.copy(spare[0], new)
        (folder / ".hidden.jpg").write_bytes(spare[1].read_bytes())  # excluded by default
        _until("a new file", lambda: str(new) in _paths(index), proc, log)

        before = {p: v for p, v in live_rows(index)}[str(files[1])]
        rewrite_photo(files[1], seed=99)
        files[2].rename(folder / "renamed.png" if files[2].suffix == ".png" else folder / "renamed.jpg")
        files[3].unlink()
        moved = sorted(folder.glob("renamed.*"))[0]

        def settled() -> bool:
            rows = dict(live_rows(index))
            return (str(files[3]) not in rows and str(files[2]) not in rows and str(moved) in rows
                    and (rows[str(files[1])] != before).any())

        _until("change, rename and delete", settled, proc, log)
        expected = sorted({str(files[0]), str(files[1]), str(moved), str(files[4]), str(files[5]), str(new)})
        assert _paths(index) == expected, (_paths(index), expected)
        assert "paths changed" in log.read_text()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    # While nothing watches: a file appears, another vanishes. The restart's first pass catches up.
    shutil.copy(spare[2], folder / "while_down.jpg")
    files[0].unlink()
    proc = _start(folder, index, tiny_model, log)
    try:
        _until("the catch-up pass", lambda: "watching" in log.read_text(), proc, log)
        paths = _paths(index)
        assert str(folder / "while_down.jpg") in paths and str(files[0]) not in paths
        assert len(paths) == len(set(paths))  # one live entry per file
        shutil.rmtree(folder / "new")  # a whole folder removed: its photos go
        _until("a deleted folder", lambda: str(new) not in _paths(index), proc, log)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    assert "stopped" in log.read_text()


def test_watch_batches_use_canonical_paths_and_record_bad_files(tiny_model: Path, tmp_path: Path) -> None:
    """What `watch` indexes per batch (index_paths) names photos as `index` does: a folder given
    through a symlink is indexed under its real path, a FIFO is recorded and never opened, a file
    over --max-file-bytes is recorded, and a vanished folder is one error naming `remove`."""
    import pytest

    from llm2search.errors import InputPathError
    from llm2search.indexer.pipeline import IndexingConfig, index_folder, index_paths
    from llm2search.store.manifest import read_manifest
    from llm2search.store.writer import read_errors

    real, link, index = tmp_path / "real", tmp_path / "link", tmp_path / "index"
    files = make_photos(real, 3, seed=31)
    link.symlink_to(real, target_is_directory=True)
    config = IndexingConfig(model=str(tiny_model), device="cpu", workers=0, progress=False, max_file_bytes=200_000)
    index_folder(link, index, config)
    assert _paths(index) == sorted(map(str, files))

    new = make_photos(tmp_path / "spare", 1, seed=32)[0]
    shutil.copy(new, link / "new.jpg")
    os.mkfifo(link / "pipe.jpg")
    (link / "huge.jpg").write_bytes(new.read_bytes() + b"\0" * 300_000)
    report = index_paths(link, [str(link / n) for n in ("new.jpg", "pipe.jpg", "huge.jpg")], index, config)
    assert report.new == 1 and report.folder == str(real)
    assert _paths(index) == sorted([*map(str, files), str(real / "new.jpg")])
    errors = dict(zip(*(read_errors(index, read_manifest(index)).column(c).to_pylist() for c in ("path", "reason"))))
    assert "not a regular file (a FIFO)" in errors[str(real / "pipe.jpg")]
    assert "--max-file-bytes" in errors[str(real / "huge.jpg")]
    assert str(real) in read_manifest(index).roots

    link.unlink()
    with pytest.raises(InputPathError, match="llm2search remove"):
        index_paths(link, [str(link / "new.jpg")], index, config)
