"""Indexing on a local 2-node Ray cluster (ray.cluster_utils.Cluster, fractional CPUs): the live
set of paths and the vectors equal the single-host indexer's after the driver is killed (SIGKILL)
and the command rerun, with an embed actor killed during the rerun. Only the cluster started here is
shut down; `ray stop` is never run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm2search.cli import app
from llm2search.indexer.pipeline import IndexingConfig
from llm2search.store.manifest import read_manifest

from .conftest import live_rows, make_photos, rewrite_photo

pytestmark = pytest.mark.slow
NODE = {"num_cpus": 2, "object_store_memory": 120 * 2**20}  # logical CPUs; tasks ask for fractions


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


def _kill_the_first_embed_actor(killed: list[int]):
    """An observer of the driver's loop (called after every step, so the run cannot end
    unobserved): the first time an embed actor has announced itself, kill it and note how many
    rows the driver had received by then."""
    import ray

    def observe(status) -> None:
        if killed:
            return
        # A generous timeout: on a loaded 2-core host the tally actor can take seconds to answer
        actors = ray.get(status.tally.actors.remote(), timeout=120)
        if actors:
            ray.kill(actors[0])
            killed.append(status.counts.get("received", 0))

    return observe


def test_ray_run_equals_single_host_with_the_driver_killed_and_rerun_and_an_actor_killed(
        cluster, tiny_model: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    made = make_photos(photos, 10)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    _single(photos, single, tiny_model)
    shutil.copytree(single, on_ray)  # the Ray run continues an index, as reruns do

    # New, changed, renamed (its stored vector is reused) and deleted files: 16 files to send.
    make_photos(photos / "more", 14, seed=7)
    rewrite_photo(made[1], seed=3)
    made[2].rename(photos / f"renamed{made[2].suffix}")
    made[4].unlink()
    (photos / "more" / "empty.png").write_bytes(b"")
    _single(photos, single, tiny_model)

    # The driver is a CLI process, SIGKILLed right after its first unit's commit ...
    command = ["index", str(photos), "--index", str(on_ray), "--model", str(tiny_model), "--device", "cpu",
               "--ray", cluster.address, "--unit-files", "4", "--embed-actors", "2", "--actor-cpus", "0.5",
               "--commit-seconds", "0", "--json"]
    env = {**os.environ, "LLM2SEARCH_CRASH_AT": "ray_after_commit:1"}
    killed_run = subprocess.run([sys.executable, "-m", "llm2search.cli", *command], env=env, capture_output=True,
                                text=True, timeout=300)
    assert killed_run.returncode == -9, killed_run.stderr[-2000:]
    job = read_manifest(on_ray).job
    assert job is not None  # the plan and one unit are committed, the other three are not

    # ... and the same run again (through the API the command calls, with an observer of the
    # driver's loop): the first embed actor to start is killed, and its work is redone.
    from llm2search.cluster.config import RayConfig
    from llm2search.cluster.driver import index_on_ray

    killed: list[int] = []
    config = IndexingConfig(model=str(tiny_model), device="cpu", progress=False, commit_seconds=0,
                            ray=RayConfig(address=cluster.address, unit_files=4, embed_actors=2, actor_cpus=0.5))
    report = index_on_ray(photos, on_ray, config, observer=_kill_the_first_embed_actor(killed))
    assert killed, "no embed actor ever started"
    summary = report.to_json()
    assert any("resumed" in w for w in summary["warnings"])
    # 17 planned files (14 new + 1 empty, 1 changed, 1 renamed) in units of 4, 4, 4, 4, 1: one
    # unit was done by the killed driver, and is not done again.
    assert summary["new"] + summary["changed"] + summary["failed"] in (13, 16)
    assert read_manifest(on_ray).job is None and not any((on_ray / "jobs").glob("*"))
    _same_live_set(on_ray, single)

    # Change detection is the single-host one: a rerun sends nothing.
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    rerun = json.loads(again.stdout[again.stdout.index("{"):])
    assert (rerun["embedded"], rerun["unchanged"], rerun["known_bad"], rerun["live"]) == (0, 23, 2, 23)


def test_a_pool_that_cannot_start_stops_with_an_error_naming_the_embed_stage(
        cluster, tiny_model: Path, tmp_path: Path) -> None:
    """One of the known silent Ray stalls: actors asking for GPUs the cluster lacks are never
    placed. The watchdog stops the run with one line naming the stage; the plan stays committed,
    so a rerun (with a pool that fits) resumes it."""
    from llm2search.cluster.config import RayConfig
    from llm2search.cluster.driver import index_on_ray
    from llm2search.cluster.watchdog import StalledError

    photos = tmp_path / "photos"
    make_photos(photos, 4)
    config = IndexingConfig(model=str(tiny_model), device="cpu", progress=False, commit_seconds=0,
                            ray=RayConfig(embed_actors=1, actor_gpus=1, decode_cpus=0.25, stall_seconds=8))
    with pytest.raises(StalledError, match="embed") as e:
        index_on_ray(photos, tmp_path / "index", config)
    assert e.value.stage == "embedded" and "\n" not in str(e.value)
    assert read_manifest(tmp_path / "index").job is not None  # resumable


def test_ray_option_without_ray_installed_says_which_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from llm2search.cli import main\n"
            f"sys.argv = ['llm2search', 'index', {str(tmp_path)!r}, '--index', {str(tmp_path / 'i')!r}, '--ray']\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "llm2search[cluster]" in lines[0], out.stderr
