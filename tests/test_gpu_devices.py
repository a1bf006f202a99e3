"""A GPU that torch cannot use is reported in one line with the fix, never ignored (torch.cuda
and nvidia-smi mocked)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llm2search.errors import ModelLoadError
from llm2search.models import cuda_builds, loading
from llm2search.models.cuda_builds import NvidiaGpu, unusable_gpu_message

A100_535 = [NvidiaGpu("NVIDIA A100-SXM4-80GB", "535.104.05")]


def test_message_names_the_driver_the_build_needs_and_the_build_to_install() -> None:
    line = unusable_gpu_message(A100_535, "2.14.1", "13.0")
    assert line == ("NVIDIA A100-SXM4-80GB is present but torch 2.14.1 (CUDA 13.0) needs NVIDIA driver >= 580 "
                    "and this one is 535.104.05; install a build for it: pip install 'torch>=2.1,<2.15' "
                    "--index-url https://download.pytorch.org/whl/cu128, or update the driver")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"warning: {line} (running on the CPU meanwhile)" in readme  # the README shows the real line
    cpu_build = unusable_gpu_message([NvidiaGpu("NVIDIA H200", "580.95.05")], "2.13.0+cpu", None)
    assert "CPU-only build" in cpu_build and "whl/cu130" in cpu_build
    too_old = unusable_gpu_message([NvidiaGpu("Tesla K80", "418.87.01")], "2.13.0", "12.8")
    assert "update the NVIDIA driver" in too_old
    assert unusable_gpu_message([], "2.13.0", "13.0") is None
    assert "\n" not in line + cpu_build + too_old


def _torch_cannot_use(monkeypatch: pytest.MonkeyPatch, gpus: list[NvidiaGpu]) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cuda_builds, "nvidia_gpus", lambda: gpus)
    monkeypatch.setattr(loading, "_WARNED", [])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_auto_device_says_so_once_and_an_explicit_cuda_device_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    _torch_cannot_use(monkeypatch, A100_535)
    with caplog.at_level(logging.WARNING, logger="llm2search.models.loading"):
        assert loading.pick_device("auto") == "cpu"
        assert loading.pick_device(None) == "cpu"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "needs NVIDIA driver >= 580" in warned[0] and "whl/cu128" in warned[0]
    with pytest.raises(ModelLoadError, match="needs NVIDIA driver >= 580 and this one is 535.104.05"):
        loading.pick_device("cuda")


def test_no_gpu_or_gpus_hidden_on_purpose_stay_quiet(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _torch_cannot_use(monkeypatch, [])
    with caplog.at_level(logging.WARNING):
        assert loading.pick_device("auto") == "cpu"
    _torch_cannot_use(monkeypatch, A100_535)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with caplog.at_level(logging.WARNING):
        assert loading.pick_device("auto") == "cpu"
    assert caplog.records == []
    with pytest.raises(ModelLoadError, match="torch sees none; use --device cpu"):
        loading.pick_device("cuda")


def test_nvidia_smi_output_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf 'NVIDIA H200, 580.95.05\\nNVIDIA H200, 580.95.05\\n'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cuda_builds.nvidia_gpus() == [NvidiaGpu("NVIDIA H200", "580.95.05")] * 2
    assert cuda_builds.build_for_driver("580.95.05").index == "cu130"
    assert cuda_builds.build_for_driver("535.104.05").index == "cu128"
    assert cuda_builds.build_for_driver("450.80.02").index == "cu118"
    assert cuda_builds.build_for_driver("450.57") is None
