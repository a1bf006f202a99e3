"""Which torch build an NVIDIA driver can run, and the one-line fix when torch cannot use the GPU.

scripts/install_plan.py loads this file by path before anything is installed, so it uses the
standard library only and imports nothing from llm2search.

Facts it rests on: NVIDIA's minor-version compatibility table (a CUDA 13.x build needs driver
>= 580, 12.x >= 525, 11.x >= 450.80.02 on Linux) and the CUDA build of PyPI's default Linux torch
wheel, read from the wheels' metadata (`pip install --dry-run --report`): torch 2.10.0 depends
on CUDA 12.8 libraries, torch 2.11.0 through 2.14.1 on CUDA 13 ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

PYTORCH_INDEX = "https://download.pytorch.org/whl"
TORCH_RANGE = "torch>=2.1,<2.15"  # pyproject.toml's bound
CPU_TORCH = "torch==2.13.0"  # the version the suite runs on; a local CPU build on CI's machines


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA major version that torch is built for."""

    cuda: int  # CUDA major version
    min_driver: tuple[int, ...]  # oldest Linux driver that runs it (minor-version compatibility)
    index: str  # PyTorch's wheel index for it (under PYTORCH_INDEX)
    torch: str  # the torch requirement to take from that index
    pypi_torch: str | None  # a torch release whose default PyPI wheel is this build, if any


BUILDS = (  # newest first
    CudaBuild(13, (580,), "cu130", TORCH_RANGE, TORCH_RANGE),  # PyPI's default since torch 2.11
    CudaBuild(12, (525,), "cu128", TORCH_RANGE, "torch==2.10.0"),
    CudaBuild(11, (450, 80, 2), "cu118", "torch>=2.1,<2.8", None),  # 2.7 is the last with CUDA 11.8
)


@dataclass(frozen=True)
class NvidiaGpu:
    name: str
    driver: str  # e.g. "535.104.05"


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def nvidia_gpus() -> list[NvidiaGpu]:
    """GPUs the NVIDIA driver reports (`nvidia-smi`), without torch; [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        name, _, driver = line.rpartition(",")
        if name.strip() and parse_version(driver):
            gpus.append(NvidiaGpu(name.strip(), driver.strip()))
    return gpus


def build_for_driver(driver: str) -> CudaBuild | None:
    """The newest CUDA build this driver runs, or None when it is too old for any."""
    version = parse_version(driver)
    return next((b for b in BUILDS if version >= b.min_driver), None)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


def install_command(build: CudaBuild) -> str:
    return f"pip install '{build.torch}' --index-url {PYTORCH_INDEX}/{build.index}"


def unusable_gpu_message(gpus: list[NvidiaGpu], torch_version: str, torch_cuda: str | None) -> str | None:
    """One line saying why torch cannot use the NVIDIA GPU that is present, and the fix; None
    when there is no GPU. Call it only when `torch.cuda.is_available()` is False."""
    if not gpus:
        return None
    gpu = gpus[0]
    fit = build_for_driver(gpu.driver)
    fix = f"install a build for it: {install_command(fit)}" if fit else (
        f"update the NVIDIA driver (CUDA {BUILDS[-1].cuda} builds need >= {_dotted(BUILDS[-1].min_driver)})")
    if torch_cuda is None:
        return f"{gpu.name} (driver {gpu.driver}) is present but torch {torch_version} is a CPU-only build; {fix}"
    major = int(parse_version(torch_cuda)[0])
    built = next((b for b in BUILDS if b.cuda == major), None)
    if built is not None and parse_version(gpu.driver) < built.min_driver:
        return (f"{gpu.name} is present but torch {torch_version} (CUDA {torch_cuda}) needs NVIDIA driver >= "
                f"{_dotted(built.min_driver)} and this one is {gpu.driver}; {fix}, or update the driver")
    return (f"{gpu.name} (driver {gpu.driver}) is present but torch {torch_version} (CUDA {torch_cuda}) cannot "
            "use it; check `nvidia-smi` and CUDA_VISIBLE_DEVICES")


def nvidia_present() -> bool:
    """Cheap look for an NVIDIA driver with a device (Linux), without torch or a subprocess: a
    machine without one never needs to import torch to find out it has no GPU."""
    import glob

    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def cuda_visible() -> bool:
    """False when CUDA_VISIBLE_DEVICES hides every GPU on purpose (then torch seeing none is fine)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is None or value.strip() not in ("", "-1")


def torch_gpu_problem() -> str | None:
    """The one-line message when an NVIDIA GPU is present but torch cannot use it, else None.
    (Imports torch: not for the install plan.)"""
    import torch

    if torch.cuda.is_available() or not cuda_visible():
        return None
    return unusable_gpu_message(nvidia_gpus(), torch.__version__, torch.version.cuda)


if __name__ == "__main__":  # scripts/install.sh, after installing
    import sys

    problem = torch_gpu_problem()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
