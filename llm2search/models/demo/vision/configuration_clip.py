"""LLM2CLIP configuration: a CLIP vision tower, its projection, and the LLM text adapter."""

from transformers import PretrainedConfig


class LLM2CLIPConfig(PretrainedConfig):
    model_type = "llm2clip"

    def __init__(
        self,
        vision_config=None,
        projection_dim=1280,
        llm_hidden_size=4096,
        adapter_hidden_size=None,
        logit_scale_init_value=2.6592,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Kept as a plain dict (CLIPVisionConfig keys) so config.json stays flat and portable.
        self.vision_config = dict(vision_config or {})
        self.projection_dim = projection_dim
        self.llm_hidden_size = llm_hidden_size
        self.adapter_hidden_size = adapter_hidden_size or projection_dim
        self.logit_scale_init_value = logit_scale_init_value
