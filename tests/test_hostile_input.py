"""Hostile input: one bad file never blocks the rest, every expected failure is one line (never a
traceback), paths are canonical, `remove` forgets a vanished folder, no decode worker outlives
a killed `llm2search index`, and the README's Python example runs as a plain script."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from llm2search.cli import app
from llm2search.store.manifest import read_manifest
from tests.conftest import live_rows, make_photos

runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def index_args(index: Path, model: Path, *extra: str) -> list[str]:
    return [*query_args(index, model), "-q", *extra]


def query_args(index: Path, model: Path) -> list[str]:
    return ["--index", str(index), "--model", str(model), "--device", "cpu"]


def one_line_error(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


# -- one bad file never blocks the rest ----------------------------------------------------
def test_fifos_sockets_huge_files_and_odd_times_are_recorded_and_the_rest_indexed(
        tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 6)
    os.mkfifo(folder / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.png"))
    (folder / "huge.jpg").write_bytes(b"\xff\xd8" + b"\0" * 300_000)  # over the limit given below
    old, future = sorted(folder.rglob("photo_000[12].*"))
    os.utime(old, ns=(0, -5_000_000_000 * 10**9))  # year 1811
    os.utime(future, ns=(0, 10_413_792_000 * 10**9))  # year 2300: beyond int64 nanoseconds
    result = runner.invoke(app, ["index", str(folder), *index_args(index, tiny_model, "--workers", "1",
                                                                   "--max-file-bytes", "200000")])
    sock.close()
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert sorted(p for p, _ in live_rows(index)) == sorted(str(p) for p in folder.rglob("photo_*"))
    errors = {Path(r["path"]).name: r["reason"] for r in json.loads(
        runner.invoke(app, ["info", "--index", str(index), "--errors", "--json"]).stdout)}
    assert "FIFO" in errors["pipe.jpg"] and "socket" in errors["sock.png"]
    assert "--max-file-bytes" in errors["huge.jpg"]
    hits = json.loads(runner.invoke(app, ["query", "x", *query_args(index, tiny_model), "--json", "-k", "10",
                                          "--sort", "date"]).stdout)
    assert len(hits) == 6 and hits[-1]["path"] == str(old)
    # Rerun: nothing changed, nothing re-read, the odd times compare equal.
    again = runner.invoke(app, ["index", str(folder), *index_args(index, tiny_model, "--workers", "0", "--json"),
                                "--max-file-bytes", "200000"])
    report = json.loads(again.stdout)
    assert report["unchanged"] == 6 and report["new"] == 0 and report["embedded"] == 0


def test_big_files_are_hashed_streaming_not_read_whole(tmp_path: Path) -> None:
    """A file is hashed in 1 MiB blocks and decoded from the open file: peak memory of the
    decode stays far below the file size (a 3 GiB file took 3 GiB before)."""
    import numpy as np
    from PIL import Image

    from llm2search.indexer.decode import DecodeOptions, decode_file
    from llm2search.indexer.scan import FileEntry
    from llm2search.models.spec import PreprocessConfig

    path = tmp_path / "padded.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    with open(path, "ab") as fh:  # trailing bytes after IEND: a valid PNG of 64 MB
        fh.write(b"\0" * (64 << 20))
    code = textwrap.dedent(f"""
        import resource, sys
        from llm2search.indexer.decode import DecodeOptions, decode_file
        from llm2search.indexer.scan import FileEntry
        from llm2search.models.spec import PreprocessConfig
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        d = decode_file(FileEntry({str(path)!r}, 0, 0), DecodeOptions(PreprocessConfig(image_size=32)))
        assert d.error is None, d.error
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    grown_mb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout.strip())
    assert grown_mb < 32, grown_mb
    small = decode_file(FileEntry(str(path), 0, 0), DecodeOptions(PreprocessConfig(image_size=32),
                                                                 max_file_bytes=1 << 20))
    assert small.error and "--max-file-bytes" in small.error


def test_query_image_that_is_a_fifo_is_refused_not_waited_on(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 3)
    assert runner.invoke(app, ["index", str(folder), *index_args(index, tiny_model, "--workers", "0")]).exit_code == 0
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    code = ("import sys; from llm2search.cli import main; sys.argv = ['llm2search'] + sys.argv[1:]; main()")
    out = subprocess.run([sys.executable, "-c", code, "query", "--image", str(fifo),
                          *query_args(index, tiny_model)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: ") and "FIFO" in out.stderr
    for target in (fifo, Path("/dev/zero")):  # and a folder that is not a directory
        line = one_line_error(runner.invoke(app, ["index", str(target), *index_args(index, tiny_model)]))
        assert "not a folder" in line


# -- every expected failure is one line ----------------------------------------------------
MANIFESTS = {
    "null": b"null", "list": b"[1, 2]", "number": b"3", "empty": b"", "truncated": b'{"format_version": 1, "mo',
    "invalid utf-8": b'{"format_version": 1, "model": {"name": "\xff\xfe"}}',
    "wrong types": json.dumps({"format_version": 1, "model": {}, "dim": "32", "shards": {}}).encode(),
    "shards not a list": None, "bad shard entry": None, "path traversal": None, "negative count": None,
    "nested": b"[" * 100_000,
}


def mangled(original: dict, case: str) -> bytes:
    m = json.loads(json.dumps(original))
    if case == "shards not a list":
        m["shards"] = "000001-abcdef01"
    elif case == "bad shard entry":
        m["shards"][0] = ["not", "an", "object"]
    elif case == "path traversal":
        m["shards"][0]["name"] = "../../../etc"
    elif case == "negative count":
        m["shards"][0]["count"] = -3
    return json.dumps(m).encode()


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_malformed_manifests_are_one_line_on_every_command(case: str, tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 3)
    assert runner.invoke(app, ["index", str(folder), *index_args(index, tiny_model, "--workers", "0")]).exit_code == 0
    manifest = index / "manifest.json"
    raw = MANIFESTS[case] if MANIFESTS[case] is not None else mangled(json.loads(manifest.read_text()), case)
    manifest.write_bytes(raw)
    outside = tmp_path / "etc"
    outside.mkdir()
    for command in (["info"], ["info", "--errors"], ["verify"], ["query", "x", "--model", str(tiny_model)],
                    ["index", str(folder), "--model", str(tiny_model), "--workers", "0"], ["remove", str(folder)]):
        line = one_line_error(runner.invoke(app, [*command, "--index", str(index)]))
        assert "manifest" in line, (command, line)
    assert outside.is_dir()  # nothing outside the index was touched


@contextmanager
def mounted(kind: str, where: Path, source: Path | None = None) -> Iterator[Path]:
    """A read-only bind mount of `source`, or a 256 KiB tmpfs, at `where` (tests run as root)."""
    where.mkdir(parents=True, exist_ok=True)
    args = (["mount", "--bind", "-o", "ro", str(source), str(where)] if kind == "ro"
            else ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)])
    subprocess.run(args, check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_read_only_disk_full_and_file_as_index_are_one_line(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 8)
    assert runner.invoke(app, ["index", str(folder), *index_args(index, tiny_model, "--workers", "0")]).exit_code == 0
    before = sorted(p for p, _ in live_rows(index))
    (folder / "new").mkdir()
    make_photos(folder / "new", 2, seed=9)
    with mounted("ro", tmp_path / "ro", index) as ro:
        line = one_line_error(runner.invoke(app, ["index", str(folder), *index_args(ro, tiny_model, "--workers", "0")]))
        assert "read-only" in line
        ok = runner.invoke(app, ["query", "x", *query_args(ro, tiny_model), "--json"])  # readers still work
        assert ok.exit_code == 0 and len(json.loads(ok.stdout)) == 8
    with mounted("ro", tmp_path / "ro-parent", tmp_path) as ro_parent:
        assert "read-only" in one_line_error(runner.invoke(
            app, ["index", str(folder), *index_args(ro_parent / "fresh-index", tiny_model, "--workers", "0")]))
    with mounted("tmpfs", tmp_path / "small") as small:
        shutil.copytree(index, small / "index")
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        (small / "filler").write_bytes(b"\0" * max(0, free - 4096))  # a page left: no shard fits
        line = one_line_error(runner.invoke(app, ["index", str(folder), *index_args(
            small / "index", tiny_model, "--workers", "0", "--commit-seconds", "0", "--shard-size", "1")]))
        assert "disk is full" in line
        assert sorted(p for p, _ in live_rows(small / "index"))[:8] == before[:8]  # the last commit opens
    as_file = tmp_path / "index-file"
    as_file.write_text("not an index")
    for command in (["index", str(folder), "--model", str(tiny_model)], ["query", "x"], ["info"], ["verify"]):
        assert "is a file" in one_line_error(runner.invoke(app, [*command, "--index", str(as_file)]))


def test_bad_server_urls_and_devices_are_one_line(tiny_model: Path, tmp_path: Path) -> None:
    for url in ("http://[::1", "http://host:99999", "ftp://x", "http://", "localhost:8000", "http://a b/",
                "http://127.0.0.1:1"):
        line = one_line_error(runner.invoke(app, ["query", "x", "--server", url]))
        assert "--server" in line or "cannot reach" in line
    folder = tmp_path / "photos"
    make_photos(folder, 2)
    for device in ("gpu", "cuda:x", "tpu", "cuda:0;rm"):
        line = one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i"),
                                                  "--model", str(tiny_model), "--device", device, "-q"]))
        assert "device" in line


# -- one photo, one entry ------------------------------------------------------------------
def test_symlinked_path_is_canonical_and_remove_forgets_a_vanished_folder(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder / "trip", 4)
    make_photos(folder / "home", 3, seed=4)
    link = tmp_path / "link"
    link.symlink_to(folder)
    for path in (folder, link, Path(os.path.relpath(folder))):
        assert runner.invoke(app, ["index", str(path), *index_args(index, tiny_model, "--workers", "0")]).exit_code == 0
    paths = [p for p, _ in live_rows(index)]
    assert len(paths) == len(set(paths)) == 7 and all(p.startswith(str(folder.resolve())) for p in paths)

    shutil.rmtree(folder / "trip")
    line = one_line_error(runner.invoke(app, ["index", str(folder / "trip"), *index_args(index, tiny_model)]))
    assert "llm2search remove" in line
    removed = runner.invoke(app, ["remove", str(link / "trip"), "--index", str(index), "--json"])
    assert removed.exit_code == 0, removed.stderr
    assert json.loads(removed.stdout)["removed"] == 4
    assert sorted(p for p, _ in live_rows(index)) == sorted(str(p.resolve()) for p in (folder / "home").rglob("*.*"))
    one = next((folder / "home").rglob("*.jpg"))
    assert json.loads(runner.invoke(app, ["remove", str(one), "--index", str(index), "--json"]).stdout)["removed"] == 1
    assert "nothing in the index" in one_line_error(runner.invoke(app, ["remove", str(tmp_path / "nope"),
                                                                        "--index", str(index)]))


# -- no orphans; the README example as a script --------------------------------------------
def children_of(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_no_process_outlives_a_killed_indexer(tiny_model: Path, tmp_path: Path) -> None:
    folder, index = tmp_path / "photos", tmp_path / "index"
    make_photos(folder, 400, size=(600, 400))
    proc = subprocess.Popen([sys.executable, "-m", "llm2search.cli", "index", str(folder),
                             *index_args(index, tiny_model, "--workers", "2")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        workers = children_of(proc.pid)
    assert len(workers) >= 2, "the decode workers never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(5)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")]
    for pid in alive:  # clean up before failing: only processes this test started
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def test_readme_python_example_runs_as_a_script(tiny_model: Path, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"Python API:\n\n```python\n(.*?)```", readme, re.S).group(1)
    from llm2search.indexer.pipeline import SMALL_RUN

    photos, index = tmp_path / "Photos", tmp_path / "photo-index"
    n = SMALL_RUN + 4  # enough files that the run starts its decode workers
    make_photos(photos, n, size=(48, 36))
    script = (block.replace('"~/Photos"', repr(str(photos))).replace('"/data/photo-index"', repr(str(index)))
              .replace("llm2search.IndexingConfig(", f"llm2search.IndexingConfig(model={str(tiny_model)!r}, "
                                                     "workers=2, progress=False, "))
    assert "workers=2" in script and str(photos) in script and "__main__" not in script
    (tmp_path / "example.py").write_text(script, encoding="utf-8")
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"{n} 0 0 0"  # new, changed, deleted, failed: the workers ran, once
    assert len(read_manifest(index).shards) >= 1


def _exit_on(items: list[str], marker: str) -> list[str]:
    """A worker task that dies as a crashing decoder does, on the file named `marker`."""
    if marker in items:
        os._exit(7)
    return [f"ok {i}" for i in items]


def test_a_worker_crash_costs_only_the_file_that_caused_it() -> None:
    """The crashed worker's chunks are retried one file per chunk in fresh workers; the file
    that alone kills a worker is the only one reported as crashed."""
    from llm2search.indexer.decode_worker import WorkerPool

    items = [f"f{i:02d}" for i in range(20)]
    with WorkerPool(2, _exit_on, ("f07",), lambda item, code: f"crashed {item} {code}") as pool:
        results = sorted(pool.run(items, chunk=4, read_ahead=2))
    assert results == sorted([f"ok {i}" for i in items if i != "f07"] + ["crashed f07 7"])
