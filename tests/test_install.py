"""The install's decisions (scripts/install_plan.py) with an NVIDIA driver simulated by a fake
`nvidia-smi`, PyTorch's index served over loopback or unreachable, and what pip resolves for the
chosen extras (`pip install --dry-run --report`): one faiss, and no test tools in the product's
install."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "scripts" / "install_plan.py"
TEST_TOOLS = {"pytest", "pytest-timeout", "playwright"}


def _fake_smi(bin_dir: Path, gpus: list[tuple[str, str]] | None, rc: int = 0) -> None:
    """An nvidia-smi that answers `--query-gpu=name,driver_version` like the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{name}, {driver}\\n" for name, driver in gpus or [])
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{lines}'\n" + (f"echo 'No devices were found' >&2; exit {rc}\n" if rc else ""))
    script.chmod(0o755)


def _plan(tmp_path: Path, gpus: list[tuple[str, str]] | None, index: str, *args: str, rc: int = 0) -> dict:
    """The plan as bash would see it: install_plan.py's output evaluated by bash."""
    bin_dir = tmp_path / "bin"
    if gpus is not None or rc:
        _fake_smi(bin_dir, gpus, rc)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "LLM2SEARCH_PYTORCH_INDEX": index}
    show = ("eval \"$(\"$0\" \"$@\")\"; printf '%s\\n' \"${TORCH[*]}\" \"${TORCH_FALLBACK[*]}\" "
            "\"$FAISS\" \"$EXTRAS\" \"$NOTE\"")
    out = subprocess.run(["bash", "-c", show, sys.executable, str(PLAN), *args], env=env,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return dict(zip(["torch", "fallback", "faiss", "extras", "note"], out))


@pytest.fixture(scope="module")
def torch_index():
    """A stand-in for PyTorch's wheel index on loopback: every `<build>/torch/` page exists."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.rstrip("/").endswith("/torch")
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"<html></html>")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl"
    server.shutdown()


UNREACHABLE = "http://127.0.0.1:9/whl"  # the discard port: connection refused


def test_cpu_machine_prefers_pytorchs_cpu_index_and_falls_back_to_todays_install(tmp_path: Path, torch_index: str) -> None:
    reachable = _plan(tmp_path, None, torch_index)
    assert reachable["torch"] == f"torch==2.13.0 --index-url {torch_index}/cpu"
    assert reachable["fallback"] == "torch==2.13.0"
    assert (reachable["faiss"], reachable["extras"], reachable["note"]) == ("faiss-cpu", "cpu,server", "")
    offline = _plan(tmp_path, None, UNREACHABLE)
    assert (offline["torch"], offline["fallback"], offline["faiss"]) == ("torch==2.13.0", "", "faiss-cpu")
    assert _plan(tmp_path, None, UNREACHABLE, "--test")["extras"] == "cpu,server,test,cluster"
    # nvidia-smi installed but no usable GPU (it exits non-zero): a CPU machine.
    assert _plan(tmp_path, [], UNREACHABLE, rc=9)["faiss"] == "faiss-cpu"


def test_gpu_host_gets_the_torch_build_its_driver_runs_and_faiss_gpu(tmp_path: Path, torch_index: str) -> None:
    recent = _plan(tmp_path, [("NVIDIA H200", "580.95.05")], UNREACHABLE)
    assert recent == {"torch": "torch>=2.1,<2.15 torchvision", "fallback": "", "faiss": "faiss-gpu",
                      "extras": "gpu,server", "note": ""}  # PyPI's default wheel is CUDA 13
    older = _plan(tmp_path, [("NVIDIA A100-SXM4-80GB", "535.104.05")], torch_index)
    assert older["torch"] == f"torch>=2.1,<2.15 torchvision --index-url {torch_index}/cu128"
    assert older["fallback"] == "torch==2.10.0 torchvision" and older["faiss"] == "faiss-gpu"
    cut_off = _plan(tmp_path, [("NVIDIA A100-SXM4-80GB", "535.104.05")], UNREACHABLE)
    assert cut_off["torch"] == "torch==2.10.0 torchvision"  # the newest PyPI wheel built for CUDA 12
    old = _plan(tmp_path, [("Tesla V100-SXM2-16GB", "470.82.01")], torch_index)
    assert old["torch"] == f"torch>=2.1,<2.8 torchvision --index-url {torch_index}/cu118"
    assert old["faiss"] == "faiss-cpu" and "too old for faiss-gpu" in old["note"]
    ancient = _plan(tmp_path, [("Tesla K80", "418.87.01")], torch_index)
    assert ancient["torch"] == "torch==2.13.0" and "update it" in ancient["note"]


def _resolved(extras: str) -> set[str]:
    """Names of everything pip would install for `.[extras]` into an empty environment."""
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation",
         "-q", "--report", "-", "-c", str(_TORCH_AS_INSTALLED), f".[{extras}]"],
        cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert report.returncode == 0, report.stderr[-2000:]
    return {item["metadata"]["name"].lower() for item in json.loads(report.stdout)["install"]}


_TORCH_AS_INSTALLED = Path(os.environ.get("TMPDIR", "/tmp")) / "llm2search-test-torch-constraint.txt"


def _closure(extras: str) -> set[str]:
    """The same question answered from this environment's installed metadata: every distribution
    that llm2search[extras] requires, transitively, with markers evaluated (what pip resolved
    when it installed them). Fast, so both of the CPU machine's installs are checked this way."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [("llm2search", tuple(extras.split(",")))]
    while todo:
        name, wanted = todo.pop()
        key = canonicalize_name(name)
        if (key, wanted) in seen:
            continue
        seen.add((key, wanted))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise AssertionError(f"{name} is required but not installed")
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted or ("",)):
                todo.append((req.name, tuple(sorted(req.extras))))
    return {k for k, _ in seen}


def test_pip_resolves_faiss_gpu_alone_and_no_test_tools_on_a_gpu_host(tmp_path: Path) -> None:
    import torch

    # torch is installed by its own step (plan["torch"]); pinned here to what is installed, so
    # the resolution is about the project's own requirements.
    _TORCH_AS_INSTALLED.write_text(f"torch=={torch.__version__}\n")
    extras = _plan(tmp_path, [("NVIDIA H200", "580.95.05")], UNREACHABLE)["extras"]
    resolved = _resolved(extras)
    assert "faiss-gpu" in resolved and "faiss-cpu" not in resolved
    assert {"llm2search", "torch", "llm2vec", "transformers", "fastapi", "uvicorn"} <= resolved
    assert not resolved & TEST_TOOLS, resolved & TEST_TOOLS


def test_the_products_install_brings_no_test_tools_and_test_sh_adds_them(tmp_path: Path) -> None:
    main = _closure(_plan(tmp_path, None, UNREACHABLE)["extras"])  # ./run.sh
    tests = _closure(_plan(tmp_path, None, UNREACHABLE, "--test")["extras"])  # ./test.sh
    assert {"faiss-cpu", "torch", "llm2vec", "fastapi", "uvicorn"} <= main and "faiss-gpu" not in main
    assert not main & TEST_TOOLS, main & TEST_TOOLS
    assert TEST_TOOLS | {"httpx"} <= tests
    assert "ray" not in main and "ray" in tests  # ./run.sh never brings Ray; the cluster test needs it
