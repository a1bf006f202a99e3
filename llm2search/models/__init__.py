"""LLM2CLIP models: presets, loading, image and text encoders, tiny-model builder."""

from .presets import PRESETS, resolve_model
from .spec import ModelSpec, PreprocessConfig, TextConfig

__all__ = ["PRESETS", "ModelSpec", "PreprocessConfig", "TextConfig", "resolve_model"]
