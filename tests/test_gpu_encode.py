"""GPU paths of the encoders, run on the CPU with torch.cuda mocked: several GPUs seen by llm2vec,
out-of-memory recovery, device and dtype choice."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest


def _embedder(tiny_model: Path):
    from llm2search.models.embedder import Embedder
    from llm2search.models.presets import resolve_model

    return Embedder(resolve_model(tiny_model), "cpu")


def test_text_encoder_never_starts_llm2vecs_process_pool(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llm2vec.llm2vec as l2v_module
    import torch

    encoder = _embedder(tiny_model).text_encoder
    texts = ["a dog on a beach", "一群人在徒步", "two red circles and a much longer tail of words", "雪"]
    # The reference: llm2vec's own encode on one device, pooled vectors through the adapter.
    pooled = encoder.l2v.encode(texts, batch_size=2, show_progress_bar=False, convert_to_tensor=True, device="cpu")
    with torch.inference_mode():
        want = torch.nn.functional.normalize(encoder.clip_model.get_text_features(pooled).float(), dim=-1).numpy()

    def no_pool(*args, **kwargs):
        raise AssertionError("llm2vec's multi-GPU process pool was started")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what a 2-GPU host reports
    monkeypatch.setattr(l2v_module.mp, "get_context", no_pool)
    encoder.batch_size = 2
    got = encoder.encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Order is the input's, whatever order the length-sorted batches ran in.
    np.testing.assert_allclose(encoder.encode(texts[::-1]), want[::-1], atol=1e-5)


def test_out_of_memory_retry_runs_after_the_failed_batch_is_freed(tiny_model: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    encoder = _embedder(tiny_model).image_encoder
    pixels = np.random.default_rng(1).integers(0, 255, (9, 64, 64, 3), dtype=np.uint8)
    expected = encoder.encode(pixels)
    real = encoder._encode
    failed: list[weakref.ref] = []

    class GpuBuffer:  # stands for the activations the failed forward pass had allocated
        pass

    def small_gpu(batch: np.ndarray) -> np.ndarray:
        if len(batch) > 2:
            activations = GpuBuffer()
            failed.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("simulated")
        # Inside an `except` block the traceback would still hold the failed frames' buffers.
        assert all(ref() is None for ref in failed), "retried while the failed batch's memory was held"
        return real(batch)

    monkeypatch.setattr(encoder, "_encode", small_gpu)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    np.testing.assert_allclose(encoder.encode(pixels), expected, atol=1e-5)
    assert len(failed) >= 3


def test_tiny_layout_runs_sdpa_attention_with_eager_results(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModel

    model = _embedder(tiny_model).image_encoder.model
    assert type(model.vision_model.encoder.layers[0].self_attn).__name__ == "CLIPSdpaAttention"
    eager = AutoModel.from_pretrained(tiny_model / "vision", trust_remote_code=True, attn_implementation="eager").eval()
    assert type(eager.vision_model.encoder.layers[0].self_attn).__name__ == "CLIPAttention"
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.get_image_features(pixel_values=x),
                                   eager.get_image_features(pixel_values=x), atol=1e-5, rtol=1e-4)


def test_models_load_straight_onto_the_gpu(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from llm2vec.models import LlamaBiModel
    from transformers import AutoModel

    from llm2search.models.loading import load_clip_model, load_llm2vec
    from llm2search.models.presets import resolve_model

    seen = []

    def recording(real):
        def load(*args, **kwargs):
            seen.append({k: kwargs.get(k) for k in ("device_map", "low_cpu_mem_usage", "torch_dtype")})
            kwargs["device_map"] = {"": "cpu"}  # this machine has no cuda:0
            return real(*args, **kwargs)
        return load

    monkeypatch.setattr(AutoModel, "from_pretrained", recording(AutoModel.from_pretrained))
    monkeypatch.setattr(LlamaBiModel, "from_pretrained", recording(LlamaBiModel.from_pretrained))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    spec = resolve_model(tiny_model)
    load_clip_model(spec, "cuda:0")
    load_llm2vec(spec, "cuda:0")
    assert seen == [{"device_map": {"": "cuda:0"}, "low_cpu_mem_usage": True, "torch_dtype": torch.float16},
                    {"device_map": {"": "cuda:0"}, "low_cpu_mem_usage": True, "torch_dtype": torch.bfloat16}]


def test_bf16_only_where_the_gpu_has_it_in_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from llm2search.models.loading import model_dtype

    monkeypatch.delenv("LLM2SEARCH_LLM_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # emulated counts
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100
    assert model_dtype("cuda:0", prefer_bf16=True) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # A100
    assert model_dtype("cuda:0", prefer_bf16=True) == torch.bfloat16
    assert model_dtype("cuda:0") == torch.float16 and model_dtype("cpu", prefer_bf16=True) == torch.float32


def test_gpu_staging_stacks_once_into_one_reused_buffer(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    encoder = _embedder(tiny_model).image_encoder
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)  # no CUDA here to pin with
    encoder._on_gpu = True
    crops = list(np.random.default_rng(2).integers(0, 255, (6, 64, 64, 3), dtype=np.uint8))
    first = encoder._stage(crops)
    np.testing.assert_array_equal(first.numpy(), np.stack(crops))
    again = encoder._stage(crops[:4])
    assert again.data_ptr() == first.data_ptr()  # the same pinned buffer, no new allocation
    np.testing.assert_array_equal(again.numpy(), np.stack(crops[:4]))


def test_several_devices_read_the_tower_from_disk_once(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm2search.models import embedder as embedder_module
    from llm2search.models.embedder import Embedder
    from llm2search.models.presets import resolve_model

    loads = []
    real = embedder_module.load_clip_model
    monkeypatch.setattr(embedder_module, "load_clip_model", lambda spec, device: loads.append(device) or real(spec, device))
    two = Embedder(resolve_model(tiny_model), "cpu,cpu")  # stands for cuda:0,cuda:1
    encoder = two.image_encoder
    assert loads == ["cpu"] and len(encoder.encoders) == 2
    assert encoder.encoders[0].model is not encoder.encoders[1].model
    crops = list(np.random.default_rng(3).integers(0, 255, (7, 64, 64, 3), dtype=np.uint8))
    np.testing.assert_allclose(encoder.encode(crops), encoder.encoders[0].encode(np.stack(crops)), atol=1e-5)


def test_read_ahead_covers_a_whole_model_batch(tmp_path: Path) -> None:
    from llm2search.indexer.decode import DecodeOptions, decode_stream
    from llm2search.indexer.scan import scan
    from llm2search.models.spec import PreprocessConfig

    from tests.conftest import make_photos

    make_photos(tmp_path, 60)
    entries = [e for e in scan(tmp_path) if hasattr(e, "size")]
    pulled = 0

    def source():
        nonlocal pulled
        for e in entries:
            pulled += 1
            yield e

    stream = decode_stream(source(), DecodeOptions(PreprocessConfig(image_size=32)), workers=1, chunk=4,
                           read_ahead=2, min_in_flight=40)
    next(stream)
    assert pulled >= 40  # 2 chunks of read-ahead would have been 8 files
    assert sum(1 for _ in stream) == 59
