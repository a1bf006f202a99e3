"""Bidirectional Llama encoder (llm2vec), the architecture of LLM2CLIP's caption-contrastive Llama."""

from llm2vec.models import LlamaBiModel


class LlamaEncoderModel(LlamaBiModel):
    """llm2vec's LlamaBiModel: Llama with causal masking removed, used with mean pooling."""
