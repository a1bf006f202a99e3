"""Is every file the manifest names the file that was written? Sizes are checked on every open
(cheap); `verify_index` also recomputes every sha256 and reads every header, for
`llm2search verify` and before any merge copies rows out of a shard."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShardCorruptError
from .manifest import SHARDS, Manifest, ShardInfo, read_manifest
from .meta_map import META_MAP_FILE
from .shard import INDEX_FILE, META_FILE, VECTORS_FILE, read_tombstones, sha256_file
from .vector_file import VectorReader

FINITE_CHUNK_ROWS = 4_096  # rows of float16 vectors checked per step: 10 MB at 1280-d, and its
# 5 MB mask (65,536 rows held 160 + 80 MB: the check of each shard before a retrain added 116 MiB)


@dataclass(frozen=True)
class Problem:
    """One file that is not what the manifest says."""

    file: str  # relative to the index directory
    what: str  # e.g. "sha256 mismatch", "missing", "is 10 bytes, the manifest says 4096"
    shard: str | None = None  # None for the trained file and the error list


@dataclass
class VerifyReport:
    index: str
    generation: int
    files: int = 0  # files checked
    bytes: int = 0  # bytes hashed
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_shards(self) -> list[str]:
        return sorted({p.shard for p in self.problems if p.shard is not None})

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "generation": self.generation, "ok": self.ok, "files": self.files,
                "bytes": self.bytes, "bad_shards": self.bad_shards,
                "problems": [asdict(p) for p in self.problems]}


def check_sizes(index_dir: Path, manifest: Manifest) -> None:
    """The cheap check every open runs: each recorded file exists with its recorded size.
    Raises FileNotFoundError for a missing file, ShardCorruptError for a wrong size."""
    index_dir = Path(index_dir)
    for shard in manifest.shards:
        for name, size in shard.sizes.items():
            actual = (index_dir / SHARDS / shard.name / name).stat().st_size
            if actual != size:
                raise ShardCorruptError(_size_message(index_dir, shard.name, name, actual, size), shard.name)
    for name, size in _loose_files(manifest):
        if size is not None:
            actual = (index_dir / name).stat().st_size
            if actual != size:
                raise ShardCorruptError(_size_message(index_dir, None, name, actual, size), "")


def verify_index(index_dir: Path) -> VerifyReport:
    """Every file the current manifest names: present, of its size, of its sha256, and (for
    shard files) of the shape the manifest says; vectors also finite."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    report = VerifyReport(str(index_dir), manifest.generation)
    for shard in manifest.shards:
        report.problems += verify_shard(index_dir, shard, manifest.dim, report)
    trained = manifest.trained or {}
    for name, size in _loose_files(manifest):
        digest = trained.get("sha256") if name == trained.get("file") else manifest.errors_sha256
        problem = _check_file(index_dir / name, size, digest, report)
        if problem:
            report.problems.append(Problem(name, problem))
    return report


def verify_shard(index_dir: Path, shard: ShardInfo, dim: int, report: VerifyReport | None = None,
                 rows_only: bool = False) -> list[Problem]:
    """What is wrong with one shard's files (empty when nothing is). `rows_only` checks only
    the files rows are copied from (metadata, vectors, tombstones): a merge rebuilds the index."""
    folder = Path(index_dir) / SHARDS / shard.name
    problems = []
    named = {f: d for f, d in shard.files.items() if not (rows_only and f in (INDEX_FILE, META_MAP_FILE))}
    if shard.tombstones:
        named[shard.tombstones] = shard.tombstones_sha256  # type: ignore[assignment]
    for name, digest in named.items():
        problem = _check_file(folder / name, shard.sizes.get(name), digest, report)
        if problem:
            problems.append(Problem(f"{SHARDS}/{shard.name}/{name}", problem, shard.name))
    if not problems:  # right bytes; now the shapes the manifest promises (old manifests lack sums)
        found = _check_structure(folder, shard, dim, Path(index_dir), rows_only)
        if found:
            problems.append(Problem(f"{SHARDS}/{shard.name}/{found[0]}", found[1], shard.name))
    return problems


def require_intact(index_dir: Path, shard: ShardInfo, dim: int) -> None:
    """Raise ShardCorruptError unless the shard passes verify_shard: merges, compaction and
    retraining call this before copying a single row out of a shard."""
    problems = verify_shard(index_dir, shard, dim, rows_only=True)
    if problems:
        first = problems[0]
        raise ShardCorruptError(
            f"shard {shard.name} fails its check ({first.file}: {first.what}); nothing was copied "
            f"out of it. Run `llm2search verify --index {index_dir} --repair` to drop it, then "
            "`llm2search index` on its folders to re-embed its photos", shard.name)


def _loose_files(manifest: Manifest) -> list[tuple[str, int | None]]:
    out = []
    if manifest.trained and manifest.trained.get("file"):
        out.append((str(manifest.trained["file"]), manifest.trained.get("size")))
    if manifest.errors_file:
        out.append((manifest.errors_file, manifest.errors_size))
    return out


def _check_file(path: Path, size: int | None, digest: str | None, report: VerifyReport | None) -> str | None:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if size is not None and actual != size:
        return f"is {actual:,} bytes; the manifest says {size:,}"
    if report is not None:
        report.files += 1
        report.bytes += actual
    if digest is None:
        return None
    try:
        got = sha256_file(path)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    return None if got == digest else "sha256 mismatch: the file changed after it was written"


def _check_structure(folder: Path, shard: ShardInfo, dim: int, index_dir: Path,
                     rows_only: bool) -> tuple[str, str] | None:
    """(file, what is wrong) when a file's content is not the shape the manifest says."""
    import pyarrow.parquet as pq

    def check(name: str) -> str | None:
        if name == VECTORS_FILE:
            vectors = np.load(folder / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
            if vectors.shape != (shard.count, dim) or vectors.dtype != np.float16:
                return f"holds {vectors.dtype} {vectors.shape}, not float16 ({shard.count}, {dim})"
            del vectors  # the header only: reading through the map would count in RSS (vector_file.py)
            with VectorReader(folder / VECTORS_FILE) as reader:
                for chunk in reader.chunks(chunk_rows=FINITE_CHUNK_ROWS):
                    if not np.isfinite(chunk).all():
                        return "holds NaN or infinite values"
        elif name == META_FILE:
            rows = pq.read_metadata(folder / META_FILE).num_rows
            if rows != shard.count:
                return f"has {rows} rows, not {shard.count}"
        elif name == INDEX_FILE:
            ntotal = _ntotal(folder / INDEX_FILE)
            if ntotal != shard.count:
                return f"holds {ntotal} vectors, not {shard.count}"
        elif name == META_MAP_FILE:
            import pyarrow as pa

            with pa.memory_map(str(folder / META_MAP_FILE), "r") as source:
                reader = pa.ipc.open_file(source)
                rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            if rows != shard.count:
                return f"has {rows} rows, not {shard.count}"
        elif len(read_tombstones(index_dir, shard)) != shard.deleted:
            return f"does not hold {shard.deleted} rows"
        return None

    names = [VECTORS_FILE, META_FILE] + ([shard.tombstones] if shard.tombstones else [])
    derived = [INDEX_FILE] + ([META_MAP_FILE] if META_MAP_FILE in shard.files else [])
    for name in names + ([] if rows_only else derived):
        try:
            what = check(name)
        except (OSError, ValueError, RuntimeError, EOFError) as e:
            text = str(e).strip().splitlines()
            what = f"cannot be read: {text[0] if text else type(e).__name__}"
        if what:
            return name, what
    return None


def _ntotal(path: Path) -> int:
    from .vector_index import read_index

    return int(read_index(path, mmap=True).ntotal)


def _size_message(index_dir: Path, shard: str | None, name: str, actual: int, size: int) -> str:
    where = f"{SHARDS}/{shard}/{name}" if shard else name
    return (f"{index_dir}/{where} is {actual:,} bytes; the manifest says {size:,} (truncated or "
            f"replaced). Run `llm2search verify --index {index_dir}`, and `--repair` to drop what is damaged")
