"""Presets resolve to pinned weights; hub code runs only at pinned revisions; offline fails clearly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from llm2search.errors import ModelLoadError
from llm2search.models.embedder import Embedder
from llm2search.models.loading import load_clip_model
from llm2search.models.presets import PRESETS, resolve_model


def test_default_is_the_llm2clip_seed_pairing() -> None:
    spec = resolve_model("default")
    assert spec.vision == "microsoft/LLM2CLIP-Openai-L-14-336"
    assert spec.vision_revision == "92512331f393a003c3d98404677f991c188162c9"
    assert spec.text == "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
    assert spec.dim == 1280 and spec.preprocess.image_size == 336
    assert spec.text_config.template_name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert spec.text_config.pooling_mode == "mean" and spec.text_config.max_length == 512
    assert all(len(p.vision_revision or "") == 40 for p in PRESETS.values())


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'nope'.*default"):
        resolve_model("nope")


def test_hub_remote_code_needs_a_pinned_revision() -> None:
    unpinned = replace(resolve_model("default"), vision_revision=None)
    with pytest.raises(ModelLoadError, match="no pinned revision"):
        load_clip_model(unpinned, "cpu")


def test_offline_without_cached_weights_is_one_clear_error() -> None:
    # HF_HUB_OFFLINE=1 in the tests: the real loading path runs and fails with a hint.
    embedder = Embedder(resolve_model("default"), "cpu")
    with pytest.raises(ModelLoadError, match="HF_HOME"):
        embedder.embed_pixels(np.zeros((1, 336, 336, 3), dtype=np.uint8))
