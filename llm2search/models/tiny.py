"""Build small LLM2CLIP-shaped models in the exact on-disk layout of the released checkpoints.

    DIR/llm2search_model.json   pairing: name, dim, preprocessing, llm2vec settings
    DIR/vision/                 config.json (auto_map) + configuration_clip.py + modeling_clip.py
                                + model.safetensors + preprocessor_config.json
    DIR/text/                   config.json (LlamaConfig, auto_map) + modeling_llama_encoder.py
                                + model.safetensors + tokenizer.json (byte-level BPE) + configs

Loading goes through the production path (AutoModel + trust_remote_code, llm2vec), so tests,
benchmarks and the bundled demo exercise the same code as the real weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .spec import MODEL_FILE, PreprocessConfig, TextConfig

REMOTE_CODE = Path(__file__).parent / "remote_code"
VISION_AUTO_MAP = {
    "AutoConfig": "configuration_clip.LLM2CLIPConfig",
    "AutoModel": "modeling_clip.LLM2CLIPModel",
}
TEXT_AUTO_MAP = {"AutoModel": "modeling_llama_encoder.LlamaEncoderModel"}
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>"]

# Enough English and Chinese for BPE merges; byte-level fallback covers any other text.
SEED_CORPUS = [
    "a photo of a dog on the beach", "a group of people hiking in the mountains",
    "two red circles", "one blue square", "three green triangles", "a yellow car in the city",
    "a black cat sleeping on a white sofa", "children playing football in the park",
    "sunset over the sea", "a bowl of noodles", "snow on the trees", "a birthday cake with candles",
    "一群人在徒步", "海边的一只狗", "两个红色的圆形", "一个蓝色的正方形", "三个绿色的三角形",
    "城市里的一辆黄色汽车", "白色沙发上睡觉的黑猫", "公园里踢足球的孩子", "海上的日落",
    "一碗面条", "树上的雪", "插着蜡烛的生日蛋糕", "山上的风景", "我们在公园里拍照",
]


@dataclass(frozen=True)
class TinyModelConfig:
    """Sizes of a tiny model; defaults build a ~0.3 MB random model in about a second."""

    name: str = "tiny-random"
    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 600
    dim: int = 32  # shared embedding size (1280 for the real LLM2CLIP)
    max_length: int = 128
    seed: int = 0


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """Byte-level BPE (any Unicode text encodes), bos prepended, with llm2vec's input names."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )


def create_modules(cfg: TinyModelConfig, corpus: Iterable[str] = SEED_CORPUS) -> tuple[Any, Any, Any]:
    """Randomly initialised (clip_model, llama_bi_model, tokenizer) of the given sizes."""
    import torch
    from llm2vec.models import LlamaBiModel
    from transformers import LlamaConfig

    from .remote_code.configuration_clip import LLM2CLIPConfig
    from .remote_code.modeling_clip import LLM2CLIPModel

    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 2,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        max_position_embeddings=max(512, cfg.max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,  # pad = eos at run time; a padding_idx would zero that embedding row
        attn_implementation="eager",
        use_cache=False,
    )
    text_model = LlamaBiModel(text_config)
    clip_config = LLM2CLIPConfig(
        vision_config={
            "hidden_size": cfg.vision_hidden,
            "intermediate_size": cfg.vision_hidden * 2,
            "num_hidden_layers": cfg.vision_layers,
            "num_attention_heads": cfg.vision_heads,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "projection_dim": cfg.dim,
        },
        projection_dim=cfg.dim,
        llm_hidden_size=cfg.text_hidden,
        adapter_hidden_size=cfg.text_hidden,
    )
    clip_model = LLM2CLIPModel(clip_config)
    return clip_model.eval(), text_model.eval(), tokenizer


def save_model_dir(
    out: Path,
    clip_model: Any,
    text_model: Any,
    tokenizer: Any,
    name: str,
    max_length: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the two halves and the pairing file; returns the directory."""
    out = Path(out)
    vision_dir, text_dir = out / "vision", out / "text"
    vision_dir.mkdir(parents=True, exist_ok=True)
    text_dir.mkdir(parents=True, exist_ok=True)

    clip_model.config.auto_map = VISION_AUTO_MAP
    clip_model.config.architectures = ["LLM2CLIPModel"]
    clip_model.save_pretrained(vision_dir, safe_serialization=True)
    for name_py in ("configuration_clip.py", "modeling_clip.py"):
        shutil.copy(REMOTE_CODE / name_py, vision_dir / name_py)
    image_size = int(clip_model.config.vision_config["image_size"])
    preprocess = PreprocessConfig(image_size=image_size)
    _write_json(vision_dir / "preprocessor_config.json", _clip_processor_config(preprocess))

    text_model.config.auto_map = TEXT_AUTO_MAP
    text_model.config.architectures = ["LlamaEncoderModel"]
    text_model.save_pretrained(text_dir, safe_serialization=True)
    shutil.copy(REMOTE_CODE / "modeling_llama_encoder.py", text_dir / "modeling_llama_encoder.py")
    tokenizer.save_pretrained(text_dir)
    text_config = TextConfig(template_name=None, pooling_mode="mean", max_length=max_length)
    _write_json(text_dir / "llm2vec_config.json", {
        "pooling_mode": "mean", "max_length": max_length, "doc_max_length": max_length,
        "skip_instruction": True,
    })

    _write_json(out / MODEL_FILE, {
        "format": 1,
        "name": name,
        "vision": "vision",
        "text": "text",
        "dim": int(clip_model.config.projection_dim),
        "preprocess": asdict(preprocess),
        "text_config": asdict(text_config),
        **(extra or {}),
    })
    return out


def build_tiny_model(out: Path, cfg: TinyModelConfig = TinyModelConfig()) -> Path:
    """A random tiny model: right shapes and layout, no meaning. For plumbing tests and benchmarks."""
    clip_model, text_model, tokenizer = create_modules(cfg)
    return save_model_dir(out, clip_model, text_model, tokenizer, cfg.name, cfg.max_length)


def _clip_processor_config(p: PreprocessConfig) -> dict[str, Any]:
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": p.image_size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": p.image_size, "width": p.image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(p.mean), "image_std": list(p.std), "do_convert_rgb": True,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
