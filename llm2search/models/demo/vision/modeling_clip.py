"""LLM2CLIP model: CLIP ViT vision tower + visual projection + adapter from LLM embeddings.

Same interface as the released LLM2CLIP checkpoints: `get_image_features(pixel_values)` and
`get_text_features(llm_embeddings)`, both returning `projection_dim`-d (unnormalised) vectors.
"""

import torch
from torch import nn
from transformers import CLIPVisionConfig, PreTrainedModel
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings, CLIPVisionTransformer

from .configuration_clip import LLM2CLIPConfig


class LLM2CLIPAdapter(nn.Module):
    """Maps a pooled LLM embedding into the shared image-text space."""

    def __init__(self, llm_hidden_size, hidden_size, projection_dim):
        super().__init__()
        self.norm = nn.LayerNorm(llm_hidden_size)
        self.fc1 = nn.Linear(llm_hidden_size, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, projection_dim, bias=False)

    def forward(self, x):
        h = self.act(self.fc1(self.norm(x)))
        h = h + self.act(self.fc2(h))
        return self.proj(h)


class LLM2CLIPModel(PreTrainedModel):
    config_class = LLM2CLIPConfig
    base_model_prefix = "llm2clip"
    main_input_name = "pixel_values"
    _supports_sdpa = True  # transformers' CLIP vision attention has an SDPA version

    def __init__(self, config):
        super().__init__(config)
        vision_config = CLIPVisionConfig(**config.vision_config)
        # The tower uses the attention from_pretrained chose for the model (SDPA by default), not
        # the eager default of a freshly built CLIPVisionConfig.
        vision_config._attn_implementation = config._attn_implementation
        self.vision_model = CLIPVisionTransformer(vision_config)
        self.visual_projection = nn.Linear(vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_adapter = LLM2CLIPAdapter(
            config.llm_hidden_size, config.adapter_hidden_size, config.projection_dim
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, CLIPVisionEmbeddings):
            # As transformers' CLIP: a unit-scale class token would drown the patch signal.
            dim = module.class_embedding.shape[0]
            nn.init.normal_(module.class_embedding, std=dim**-0.5)
            fan_in = module.patch_embedding.weight[0].numel()
            nn.init.normal_(module.patch_embedding.weight, std=fan_in**-0.5)
        elif isinstance(module, nn.Linear):
            # fan-in scaling keeps signals alive through the residual stream at any width
            nn.init.normal_(module.weight, std=module.in_features**-0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_image_features(self, pixel_values):
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)

    def get_text_features(self, inputs):
        return self.text_adapter(inputs)

    def forward(self, pixel_values=None, llm_embeddings=None):
        image = self.get_image_features(pixel_values) if pixel_values is not None else None
        text = self.get_text_features(llm_embeddings) if llm_embeddings is not None else None
        return image, text
