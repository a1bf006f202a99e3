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
