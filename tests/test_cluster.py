"""Indexing on a local 2-node Ray cluster (ray.cluster_utils.Cluster, fractional CPUs): the live
set of paths and the vectors equal the single-host indexer's, with an embed actor killed mid-run,
and with the driver killed (SIGKILL) and the command rerun. Only the cluster started here is
shut down; `ray stop` is never run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm2search.cli import app
from llm2search.cluster.config import RayConfig
from llm2search.indexer.pipeline import IndexingConfig
from llm2search.store.manifest import read_manifest

from .conftest import live_rows, make_photos, rewrite_photo

pytestmark = pytest.mark.slow
NODE = {"num_cpus": 2, "object_store_memory": 120 * 2**20}  # logical CPUs; tasks ask for fractions
SMALL = {"actor_cpus": 0.5, "decode_cpus": 0.25, "write_cpus": 0.25, "decode_batch": 4, "stall_seconds": 180}


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    c.add_node(**NODE)
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()  # this cluster's processes only


def _single(folder: Path, index: Path, model: Path) -> None:
    from llm2search.indexer.pipeline import index_folder

    index_folder(folder, index, IndexingConfig(model=str(model), device="cpu", workers=0, progress=False))


def _same_live_set(a: Path, b: Path) -> None:
    rows_a, rows_b = live_rows(a), live_rows(b)
    assert len(rows_a) == len({p for p, _ in rows_a}), "a path is live twice"
    assert sorted(p for p, _ in rows_a) == sorted(p for p, _ in rows_b)
    va, vb = dict(rows_a), dict(rows_b)
    worst = max(float(np.abs(va[p] - vb[p]).max()) for p in va)
    assert worst < 2e-3, worst


def test_ray_run_equals_single_host_with_an_actor_killed_then_driver_killed_and_rerun(
        cluster, tiny_model: Path, tmp_path: Path) -> None:
    import ray

    import llm2search

    photos = tmp_path / "photos"
    made = make_photos(photos, 24)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    _single(photos, single, tiny_model)

    # 1. A fresh index on the cluster; one embed actor is killed once rows are flowing.
    killed: list[str] = []

    def kill_one(status) -> None:
        if not killed and status.counts.get("embedded", 0) >= 4:
            actors = ray.get(status.tally.actors.remote())
            if actors:
                ray.kill(actors[0])
                killed.append("yes")

    from llm2search.cluster.driver import index_on_ray

    config = IndexingConfig(model=str(tiny_model), device="cpu", progress=False, commit_seconds=0,
                            ray=RayConfig(unit_files=6, embed_actors=2, **SMALL))
    report = index_on_ray(photos, on_ray, config, observer=kill_one)
    assert killed, "the run ended before an actor could be killed"
    assert (report.new, report.failed, report.live) == (24, 1, 24)
    _same_live_set(on_ray, single)
    assert read_manifest(on_ray).job is None  # the job ended with its last unit
    assert not (on_ray / "jobs").exists() or not any((on_ray / "jobs").iterdir())
    again = llm2search.index_folder(photos, on_ray, config)  # nothing changed: nothing is sent
    assert (again.unchanged, again.known_bad, again.embedded) == (24, 1, 0)

    # 2. Changes (new, changed, renamed, deleted files); the driver is a CLI process that is
    # SIGKILLed right after its first unit commit, and the same command is run again.
    make_photos(photos / "more", 3, seed=7)
    rewrite_photo(made[1], seed=3)
    made[2].rename(photos / f"renamed{made[2].suffix}")
    made[4].unlink()
    _single(photos, single, tiny_model)
    command = ["index", str(photos), "--index", str(on_ray), "--model", str(tiny_model), "--device", "cpu",
               "--ray", cluster.address, "--unit-files", "1", "--embed-actors", "1", "--actor-cpus", "0.5",
               "--commit-seconds", "0", "--quiet"]
    env = {**os.environ, "LLM2SEARCH_CRASH_AT": "ray_after_commit:1"}
    killed_run = subprocess.run([sys.executable, "-m", "llm2search.cli", *command], env=env, capture_output=True,
                                text=True, timeout=240)
    assert killed_run.returncode == -9, killed_run.stderr[-2000:]
    job = read_manifest(on_ray).job
    assert job is not None  # the plan and one done unit are committed, the rest is not
    result = CliRunner().invoke(app, [*command[:-1], "--json"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert any("resumed" in w for w in summary["warnings"])
    assert summary["new"] + summary["changed"] == 4  # 5 planned files (3 new, 1 changed, 1 renamed), 1 done
    assert read_manifest(on_ray).job is None
    _same_live_set(on_ray, single)


def test_ray_option_without_ray_installed_says_which_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from llm2search.cli import main\n"
            f"sys.argv = ['llm2search', 'index', {str(tmp_path)!r}, '--index', {str(tmp_path / 'i')!r}, '--ray']\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "llm2search[cluster]" in lines[0], out.stderr
