"""Load LLM2CLIP's two halves through the real paths: AutoModel with the checkpoint's own remote
code for the vision tower + adapter, and llm2vec over the bidirectional Llama for text."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .cuda_builds import torch_gpu_problem
from .spec import ModelSpec

log = logging.getLogger(__name__)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DEVICE = re.compile(r"cpu|mps|(cuda|xpu)(:[0-9]{1,3})?")
# The 8B Llama needs 32 GB of RAM in float32; bfloat16 halves that on a CPU-only machine.
LLM_DTYPE_ENV = "LLM2SEARCH_LLM_DTYPE"


def pick_device(requested: str | None = None) -> str:
    """`auto` (or None) means the first CUDA GPU when there is one, else the CPU."""
    import torch

    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        _warn_unusable_gpu()
        return "cpu"
    if not _DEVICE.fullmatch(requested):
        raise ModelLoadError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N, or a comma-separated "
                             "list such as cuda:0,cuda:1")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        problem = torch_gpu_problem()
        raise ModelLoadError(problem if problem else
                             f"--device {requested} asked for a GPU but torch sees none; use --device cpu")
    return requested


_WARNED: list[str] = []


def _warn_unusable_gpu() -> None:
    """Say once, in one line, when `auto` falls back to the CPU although an NVIDIA GPU is present
    (a torch build the driver cannot run): the 8B text model on the CPU is minutes per query."""
    problem = None if _WARNED else torch_gpu_problem()
    if problem:
        _WARNED.append(problem)
        log.warning("warning: %s (running on the CPU meanwhile)", problem)


def pick_devices(requested: str | None = None) -> list[str]:
    """Devices for image encoding: a comma-separated list (`cuda:0,cuda:1`), or `auto`: every
    GPU when there are several, else the single best device."""
    import torch

    if requested and "," in requested:
        return [pick_device(d.strip()) for d in requested.split(",") if d.strip()]
    if requested in (None, "", "auto") and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [pick_device(requested)]


def share_cpu_with_workers(workers: int) -> None:
    """Give torch the cores the decode workers leave free. Oversubscribed OpenMP threads spin
    against each other: on a busy 2-core machine a small matmul was 160x slower with 2 threads
    than with 1."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))


def model_dtype(device: str, prefer_bf16: bool = False) -> Any:
    """fp16 (or bf16 for the LLM) on a GPU, fp32 on the CPU where half precision is slow."""
    import torch

    if prefer_bf16 and os.environ.get(LLM_DTYPE_ENV):
        name = os.environ[LLM_DTYPE_ENV]
        if name not in ("float32", "bfloat16", "float16"):
            raise ModelLoadError(f"{LLM_DTYPE_ENV}={name!r}: use float32, bfloat16 or float16")
        return getattr(torch, name)
    if not device.startswith("cuda"):
        return torch.float32
    if prefer_bf16 and native_bf16(device):
        return torch.bfloat16
    return torch.float16


def native_bf16(device: str) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) and later. `is_bf16_supported()` also
    says yes for older GPUs, where bf16 is emulated and slow; those get fp16."""
    import torch

    return torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def _straight_to(device: str) -> dict[str, Any]:
    """from_pretrained options that put the weights on `device` as they are read, instead of
    building the model in host RAM and copying it over (8B parameters: 16 GB of host RAM)."""
    return {"low_cpu_mem_usage": True, **({"device_map": {"": device}} if device.startswith("cuda") else {})}


def _source(path_or_id: str, revision: str | None, local: bool) -> tuple[str, dict[str, Any]]:
    """Where to load from, and whether remote code may run: only a pinned hub revision or a
    directory the user named explicitly."""
    if local:
        if not Path(path_or_id).is_dir():
            raise ModelLoadError(f"model directory {path_or_id} does not exist")
        return path_or_id, {"trust_remote_code": True}
    if revision is None or not _COMMIT.match(revision):
        raise ModelLoadError(
            f"{path_or_id} has no pinned revision in this version of llm2search, so its remote code "
            "is not trusted; download it (huggingface-cli download) and pass the local copy "
            "with --model DIR (see README, 'Using a local copy of the weights')"
        )
    return path_or_id, {"trust_remote_code": True, "revision": revision}


def load_clip_model(spec: ModelSpec, device: str) -> Any:
    """The LLM2CLIP vision tower, visual projection and text adapter, in eval mode on `device`."""
    from transformers import AutoModel

    source, kwargs = _source(spec.vision, spec.vision_revision, spec.local)
    try:
        model = AutoModel.from_pretrained(source, torch_dtype=model_dtype(device), **_straight_to(device), **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(_load_hint(source, e)) from e
    return (model if device.startswith("cuda") else model.to(device)).eval()


def load_llm2vec(spec: ModelSpec, device: str) -> Any:
    """llm2vec around the caption-contrastive Llama: left padding, pad = eos, mean pooling.

    The Llama is built by llm2vec's own bidirectional class for its config (LlamaBiModel for a
    LlamaConfig), as `LLM2Vec.from_pretrained` does, so no remote code from the text repo runs.
    """
    from llm2vec import LLM2Vec
    from transformers import AutoConfig, AutoTokenizer

    source = spec.text
    if spec.local and not Path(source).is_dir():
        raise ModelLoadError(f"model directory {source} does not exist")
    revision = {"revision": spec.text_revision} if spec.text_revision else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **revision)
        config = AutoConfig.from_pretrained(source, **revision)
        model_class = LLM2Vec._get_model_class(type(config).__name__, enable_bidirectional=True)
        model = model_class.from_pretrained(
            source, config=config, torch_dtype=model_dtype(device, prefer_bf16=True), **_straight_to(device),
            **revision,
        )
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(_load_hint(source, e)) from e
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    # llm2vec picks its prompt template by this exact name; a local copy needs it set too.
    model.config._name_or_path = spec.text_config.template_name or str(source)
    max_length = spec.text_config.max_length
    return LLM2Vec(
        (model if device.startswith("cuda") else model.to(device)).eval(),
        tokenizer,
        pooling_mode=spec.text_config.pooling_mode,
        max_length=max_length,
        doc_max_length=max_length,
    )


def _load_hint(source: str, e: Exception) -> str:
    return (
        f"could not load model {source}: {e}. On a machine without internet access, fill the "
        "Hugging Face cache first (HF_HOME) or pass --model DIR with a local copy"
    )
