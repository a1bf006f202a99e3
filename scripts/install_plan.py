#!/usr/bin/env python3
"""Decide what scripts/install.sh installs on this machine; print it as bash assignments.

    python3 scripts/install_plan.py --host     # what the decision depends on (cpu, or GPU + driver)
    python3 scripts/install_plan.py [--test]   # TORCH=(...) TORCH_FALLBACK=(...) FAISS=... EXTRAS=... NOTE=...

One faiss: faiss-gpu on a host whose NVIDIA driver runs its CUDA 12 build (>= 525), faiss-cpu
everywhere else (the two own the same `faiss` module). torch: the CUDA build the driver runs
(llm2search/models/cuda_builds.py), with torchvision for GPU JPEG decoding, from PyPI where PyPI
has that build, else from PyTorch's index; on a machine without a GPU, PyTorch's CPU wheel index
when it is reachable (PyPI's default Linux wheel brings GBs of CUDA libraries), else plain
`torch==2.13.0`. Standard library only: it runs before anything is installed.
LLM2SEARCH_PYTORCH_INDEX replaces PyTorch's index URL (tests serve one on loopback).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAISS_GPU_MIN_DRIVER = (525,)  # faiss-gpu 1.15 on PyPI depends on nvidia-cuda-runtime-cu12 >= 12.6
FAISS_VERSIONS = ">=1.15,<1.16"


def _cuda_builds():
    spec = importlib.util.spec_from_file_location("cuda_builds", ROOT / "llm2search" / "models" / "cuda_builds.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cuda_builds"] = module  # dataclasses look their module up while building classes
    spec.loader.exec_module(module)
    return module


cb = _cuda_builds()


def index_url(name: str) -> str:
    return f"{os.environ.get('LLM2SEARCH_PYTORCH_INDEX', cb.PYTORCH_INDEX).rstrip('/')}/{name}"


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=8):
            return True
    except (OSError, ValueError):
        return False


def plan(test: bool) -> dict:
    gpus = cb.nvidia_gpus()
    # Ray (the cluster extra) is tested here but never part of the product's own install.
    extras = ["server"] + (["test", "cluster"] if test else [])
    if not gpus:
        cpu = index_url("cpu")
        torch = [cb.CPU_TORCH, "--index-url", cpu] if reachable(cpu) else [cb.CPU_TORCH]
        return {"TORCH": torch, "TORCH_FALLBACK": [cb.CPU_TORCH] if len(torch) > 1 else [],
                "FAISS": "faiss-cpu", "EXTRAS": ",".join(["cpu", *extras]), "NOTE": ""}
    gpu = gpus[0]
    driver = cb.parse_version(gpu.driver)
    build = cb.build_for_driver(gpu.driver)
    faiss = "faiss-gpu" if driver >= FAISS_GPU_MIN_DRIVER else "faiss-cpu"
    note = ""
    if build is None:
        torch, fallback = [cb.CPU_TORCH], []
        note = f"{gpu.name}: driver {gpu.driver} is too old for any torch CUDA build; update it (>= 525) and rerun"
    elif build.pypi_torch == cb.TORCH_RANGE:  # PyPI's default wheel is this build
        torch, fallback = [cb.TORCH_RANGE], []
    else:
        url = index_url(build.index)
        if reachable(url):
            torch, fallback = [build.torch, "--index-url", url], ([build.pypi_torch] if build.pypi_torch else [])
        elif build.pypi_torch:  # the newest release whose PyPI wheel is this CUDA build
            torch, fallback = [build.pypi_torch], []
        else:
            torch, fallback = [cb.CPU_TORCH], []
            note = (f"{gpu.name}: driver {gpu.driver} needs torch's CUDA {build.cuda} build from {url}, which is "
                    "unreachable; installed the CPU build: update the driver (>= 580) or rerun with access to it")
    if torch[0] != cb.CPU_TORCH:  # a CUDA build: torchvision's nvJPEG decodes JPEGs on the GPU
        torch, fallback = _with_torchvision(torch), _with_torchvision(fallback)
    if faiss == "faiss-cpu" and not note:
        note = f"{gpu.name}: driver {gpu.driver} is too old for faiss-gpu (needs >= 525): search runs on the CPU"
    return {"TORCH": torch, "TORCH_FALLBACK": fallback, "FAISS": faiss,
            "EXTRAS": ",".join(["gpu" if faiss == "faiss-gpu" else "cpu", *extras]), "NOTE": note}


def _with_torchvision(args: list[str]) -> list[str]:
    """torchvision beside torch, from the same index: pip takes the release built for that torch."""
    return [args[0], "torchvision", *args[1:]] if args else args


def host() -> str:
    gpus = cb.nvidia_gpus()
    return "cpu" if not gpus else " ".join(f"{g.name}/{g.driver}" for g in gpus)


def as_bash(decision: dict) -> str:
    lines = []
    for key, value in decision.items():
        if isinstance(value, list):
            lines.append(f"{key}=({' '.join(shlex.quote(v) for v in value)})")
        else:
            lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="also the test tools (./test.sh)")
    parser.add_argument("--host", action="store_true", help="print what the decision depends on")
    args = parser.parse_args()
    print(host() if args.host else as_bash(plan(args.test)))


if __name__ == "__main__":
    main()
