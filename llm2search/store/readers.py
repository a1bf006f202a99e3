"""Reader leases: how an open index version keeps its files while writers move on (the reader
table of LMDB, the read marks of SQLite's WAL).

Each open reader holds `<index>/readers/<id>.lease`, a small JSON file naming the generation it
pinned and every file that generation uses, with an exclusive flock held for as long as the
reader is open. The writer's garbage collection deletes a file only when neither the current
manifest nor a live lease names it. A lease whose lock can be taken belongs to a reader that
exited or crashed (the kernel drops flocks of dead processes) and is deleted.

A reader pins a generation in three steps: read the manifest, publish a lease naming its files,
read the manifest again. If the generation is unchanged, any writer that commits a newer one
commits after the lease was visible, so its garbage collection sees the lease; otherwise the
reader pins the newer generation the same way. No grace period or clock is involved.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .manifest import Manifest, read_manifest

READERS = "readers"
LEASE_SUFFIX = ".lease"
PIN_ATTEMPTS = 50  # a writer would have to commit this many times during one open


@dataclass(frozen=True)
class PinnedFiles:
    """The files of one generation, as paths relative to the index directory."""

    shards: frozenset[str]  # shard directory names
    files: frozenset[str]  # other files: tombstones (shards/<name>/<file>), trained-*.faiss

    @classmethod
    def of(cls, manifest: Manifest) -> "PinnedFiles":
        files = {f"shards/{s.name}/{s.tombstones}" for s in manifest.shards if s.tombstones}
        if manifest.trained and manifest.trained.get("file"):
            files.add(str(manifest.trained["file"]))
        if manifest.errors_file:
            files.add(manifest.errors_file)
        return cls(frozenset(s.name for s in manifest.shards), frozenset(files))

    def to_json(self) -> dict[str, Any]:
        return {"shards": sorted(self.shards), "files": sorted(self.files)}


class Lease:
    """One reader's claim on the files of the generation it opened. Release it with `close`."""

    def __init__(self, path: Path | None, fh: Any, manifest: Manifest):
        self.path = path  # None when the index directory cannot be written (see pin)
        self._fh = fh
        self.manifest = manifest

    @property
    def held(self) -> bool:
        return self._fh is not None

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:  # already collected, or a read-only directory: the lock drop is enough
                pass
        fh.close()


def pin(index_dir: Path) -> Lease:
    """Read the current manifest and pin its generation. Where the index directory cannot be
    written (read-only media, another user's index) there is no lease and no writer can be
    collecting either; the returned lease then protects nothing (`held` is False)."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    for _ in range(PIN_ATTEMPTS):
        lease = _publish(index_dir, manifest)
        if lease is None:
            return Lease(None, None, manifest)
        again = read_manifest(index_dir)
        if same_version(again, manifest):
            return lease
        lease.close()
        manifest = again
    return Lease(None, None, manifest)  # pragma: no cover - needs 50 commits during one open


def pin_held(index_dir: Path, manifest: Manifest) -> Lease:
    """Pin a generation that a live lease of another reader already names (a Ray Serve router
    handing its version to its shard groups): its files cannot have been collected, so the
    manifest is not read again. Without a lease, as in `pin`."""
    lease = _publish(Path(index_dir), manifest)
    return lease if lease is not None else Lease(None, None, manifest)


def live_pins(index_dir: Path) -> PinnedFiles:
    """Every file named by a live lease; stale leases (their reader is gone) are deleted."""
    shards: set[str] = set()
    files: set[str] = set()
    for path, data in _leases(Path(index_dir)):
        shards.update(str(s) for s in data.get("shards", ()))
        files.update(str(f) for f in data.get("files", ()))
    return PinnedFiles(frozenset(shards), frozenset(files))


def live_readers(index_dir: Path) -> list[dict[str, Any]]:
    """What each live lease says (pid, host, generation, ...): for `verify` and for tests."""
    return [data for _, data in _leases(Path(index_dir))]


def _leases(index_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    folder = index_dir / READERS
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return
    for path in entries:
        if not path.name.endswith(LEASE_SUFFIX) and not _old(path):
            continue  # a lease being published right now (locked only once opened)
        state = _probe(path)
        if state is None:
            continue
        if state == "stale":
            try:
                path.unlink()
            except OSError:
                pass
            continue
        if path.name.endswith(LEASE_SUFFIX):
            yield path, state


def _probe(path: Path) -> dict[str, Any] | str | None:
    """"stale" when nobody holds the file's lock, its JSON when someone does, None when it is
    gone or is not a lease. A live lease that cannot be parsed protects everything its reader
    might use, which only the reader knows: it is reported with a marker that keeps all."""
    try:
        fh = open(path, "rb")
    except OSError:
        return None
    with fh:
        if _try_lock(fh):
            return "stale"
        try:
            data = json.loads(fh.read().decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            data = {"shards": ["*"], "files": ["*"]}
        return data


def _old(path: Path, seconds: float = 60.0) -> bool:
    import time

    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _publish(index_dir: Path, manifest: Manifest) -> Lease | None:
    folder = index_dir / READERS
    name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp = folder / f".{name}.tmp"
    final = folder / f"{name}{LEASE_SUFFIX}"
    body = {"pid": os.getpid(), "host": socket.gethostname(), "generation": manifest.generation,
            "updated": manifest.updated, **PinnedFiles.of(manifest).to_json()}
    try:
        folder.mkdir(exist_ok=True)
        fh = open(tmp, "w+b")
    except OSError:
        return None
    try:
        _lock(fh)  # held before the lease is visible under its final name
        fh.write(json.dumps(body).encode("utf-8"))
        fh.flush()
        os.replace(tmp, final)
    except OSError:
        fh.close()
        tmp.unlink(missing_ok=True)
        return None
    return Lease(final, fh, manifest)


def same_version(a: Manifest, b: Manifest) -> bool:
    """True when two manifests are the same commit."""
    return (a.generation, a.updated, a.created) == (b.generation, b.updated, b.created)


def _lock(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: leases are kept until their reader closes
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


def _try_lock(fh: Any) -> bool:
    """True when the lock could be taken (then released): the lease's reader is gone."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no way to tell, keep the lease
        return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return True
