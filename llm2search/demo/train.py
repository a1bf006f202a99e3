"""Train the bundled demo model: a tiny LLM2CLIP (CLIP ViT + bidirectional Llama via llm2vec +
the LLM2CLIP adapter) learned contrastively from scratch on the synthetic shapes world.

    python -m llm2search.demo.train --out llm2search/models/demo

Runs on one CPU thread in about ten minutes and is deterministic for a given torch build. Text
goes through llm2vec exactly as `TextEncoder` sends it at query time (separator, left padding,
pad = eos, mean pooling over the text tokens), so training and inference cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..models.spec import PreprocessConfig
from ..models.text_encoder import LLM2VEC_SEPARATOR
from ..models.tiny import SEED_CORPUS, TinyModelConfig, create_modules, save_model_dir
from .scenes import CLASSES, caption_corpus, render_scene

MODEL_NAME = "demo-shapes-bilingual"
EVAL_SEED = 1_000_003  # held-out scenes for the progress report; training streams use `seed`


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults made the bundled weights."""

    model: TinyModelConfig = TinyModelConfig(
        name=MODEL_NAME, image_size=64, patch_size=8, vision_hidden=96, vision_layers=4,
        vision_heads=4, text_hidden=96, text_layers=2, text_heads=4, vocab_size=700, dim=64,
        max_length=64, seed=0,
    )
    steps: int = 1200
    per_class: int = 2  # scenes of each of the 54 classes in a batch (batch = 54 x per_class)
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.05
    canonical_p: float = 0.35  # how often a caption is the canonical one rather than a variant
    seed: int = 0
    threads: int = 1  # one thread beat two on a contended 2-core machine
    eval_every: int = 300
    eval_per_class: int = 10  # P@5 can reach 1 only with >= 5 scenes per class


def normalise(pixels: np.ndarray, preprocess: PreprocessConfig) -> Any:
    """uint8 (N, S, S, 3) to the tower's input, with the same arithmetic as `ImageEncoder`."""
    import torch

    shape = (1, 3, 1, 1)
    mean = torch.tensor(preprocess.mean).view(shape) * 255.0
    std = torch.tensor(preprocess.std).view(shape) * 255.0
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    return (x - mean) / std


def embed_texts(l2v: Any, texts: list[str]) -> Any:
    """Pooled LLM vectors with gradients, through llm2vec's own tokenize/forward (as `encode`)."""
    features = l2v.tokenize([l2v.prepare_for_tokenization(LLM2VEC_SEPARATOR + t) for t in texts])
    return l2v.forward(features)


def make_llm2vec(text_model: Any, tokenizer: Any, max_length: int) -> Any:
    from llm2vec import LLM2Vec

    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return LLM2Vec(text_model, tokenizer, pooling_mode="mean", max_length=max_length,
                   doc_max_length=max_length)


def contrastive_loss(image: Any, text: Any, labels: Any, logit_scale: Any) -> Any:
    """Symmetric InfoNCE where every pair of the same class counts as a positive."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp().clamp(max=100.0) * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
        + torch.sum(-target * F.log_softmax(logits.T, dim=1), dim=1).mean()
    )


def evaluate(clip: Any, l2v: Any, preprocess: PreprocessConfig, per_class: int, k: int = 5) -> dict[str, float]:
    """Precision@k of the canonical captions over fresh scenes, per language (in memory)."""
    import torch
    import torch.nn.functional as F

    rng_pixels, labels = [], []
    for c, cls in enumerate(CLASSES):
        for i in range(per_class):
            rng_pixels.append(render_scene(cls, np.random.default_rng([EVAL_SEED, c, i]), preprocess.image_size))
            labels.append(c)
    was_training = clip.training
    clip.eval(), l2v.eval()
    with torch.no_grad():
        img = F.normalize(clip.get_image_features(normalise(np.stack(rng_pixels), preprocess)), dim=-1)
        y = torch.tensor(labels)
        out = {}
        for lang in ("en", "zh"):
            texts = [getattr(cls, lang) for cls in CLASSES]
            txt = F.normalize(clip.get_text_features(embed_texts(l2v, texts)), dim=-1)
            top = (txt @ img.T).topk(k, dim=1).indices
            out[f"p@{k}_{lang}"] = float((y[top] == torch.arange(len(CLASSES))[:, None]).float().mean())
    if was_training:
        clip.train(), l2v.train()
    return out


def train(out: Path, cfg: TrainConfig = TrainConfig(), log: Any = print) -> dict[str, Any]:
    import torch

    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    corpus = caption_corpus() + SEED_CORPUS
    clip, text_model, tokenizer = create_modules(cfg.model, corpus)
    l2v = make_llm2vec(text_model, tokenizer, cfg.model.max_length)
    preprocess = PreprocessConfig(image_size=cfg.model.image_size)
    params = [p for p in (*clip.parameters(), *text_model.parameters())]
    n_params = sum(p.numel() for p in params)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    log(f"{MODEL_NAME}: {n_params:,} parameters, {cfg.steps} steps of {len(CLASSES) * cfg.per_class}")

    rng = np.random.default_rng([cfg.seed, 1])  # training scenes and captions
    english = [cls.english_phrasings() for cls in CLASSES]
    chinese = [cls.chinese_phrasings() for cls in CLASSES]
    clip.train(), l2v.train()
    started = time.monotonic()
    history = []
    for step in range(1, cfg.steps + 1):
        labels = np.repeat(np.arange(len(CLASSES)), cfg.per_class)
        pixels = np.stack([render_scene(CLASSES[c], rng, cfg.model.image_size) for c in labels])
        texts = []
        for j, c in enumerate(labels):
            pool = english[c] if j % 2 == 0 else chinese[c]  # each class gets both languages
            texts.append(pool[0] if rng.random() < cfg.canonical_p else pool[rng.integers(len(pool))])
        image = clip.get_image_features(normalise(pixels, preprocess))
        text = clip.get_text_features(embed_texts(l2v, texts))
        loss = contrastive_loss(image, text, torch.from_numpy(labels), clip.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps:
            log(f"step {step:5d}  loss {loss.item():.4f}  scale {clip.logit_scale.exp().item():.1f}  "
                f"{time.monotonic() - started:.0f}s")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            scores = evaluate(clip, l2v, preprocess, cfg.eval_per_class)
            history.append({"step": step, **scores})
            log(f"         held-out {scores}")
    seconds = time.monotonic() - started

    clip.eval(), text_model.eval()
    record = {
        "made_by": "python -m llm2search.demo.train",
        "train_config": _jsonable(asdict(cfg)),
        "parameters": n_params,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "held_out": history[-1] if history else None,
    }
    save_model_dir(out, clip, text_model, tokenizer, cfg.model.name, cfg.model.max_length,
                   extra={"demo": True, "training": record})
    log(f"saved {out} after {seconds:.0f}s")
    return record


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    args = parser.parse_args(argv)
    cfg = replace(TrainConfig(), steps=args.steps, seed=args.seed, threads=args.threads)
    train(args.out, cfg)


if __name__ == "__main__":
    main()
