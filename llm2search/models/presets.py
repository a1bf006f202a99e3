"""Named model pairings. A name resolves to exactly one set of weights: hub id + pinned revision."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..errors import ModelLoadError, ModelMismatchError
from .spec import MODEL_FILE, ModelSpec, PreprocessConfig, TextConfig, identities_match

# Image processor settings of the OpenAI CLIP checkpoints each LLM2CLIP tower was fine-tuned from
# (openai/clip-vit-large-patch14-336, -patch14, clip-vit-base-patch16): shortest side, bicubic,
# centre crop, CLIP mean/std. Shipped here so indexing needs no processor download.
CLIP_336 = PreprocessConfig(image_size=336)
CLIP_224 = PreprocessConfig(image_size=224)

LLAMA3_8B_CC = "microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
# llm2vec chooses its prompt template by this exact name (LLM2CLIP's own usage sets it).
LLAMA3_TEMPLATE = TextConfig(template_name="meta-llama/Meta-Llama-3-8B-Instruct", max_length=512)
# No commit of this repo could be verified offline; its weights load through llm2vec's own
# LlamaBiModel (no remote code runs), and README "Model revisions" says how to pin a local copy.
LLAMA3_8B_CC_REVISION: str | None = None


def _paired_with_llama3(name: str, vision: str, revision: str, preprocess: PreprocessConfig) -> ModelSpec:
    """An LLM2CLIP OpenAI tower with its adapter, paired with the caption-contrastive Llama-3-8B."""
    return ModelSpec(
        name=name, vision=vision, vision_revision=revision, text=LLAMA3_8B_CC,
        text_revision=LLAMA3_8B_CC_REVISION, dim=1280, preprocess=preprocess,
        text_config=LLAMA3_TEMPLATE,
    )


# Revisions as pinned in mteb's model registry (embeddings-benchmark/mteb, llm2clip_models.py).
PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _paired_with_llama3("llm2clip-openai-l14-336", "microsoft/LLM2CLIP-Openai-L-14-336",
                            "92512331f393a003c3d98404677f991c188162c9", CLIP_336),
        _paired_with_llama3("llm2clip-openai-l14-224", "microsoft/LLM2CLIP-Openai-L-14-224",
                            "6b8a11a94ff380fa220dfefe73ac9293d2677575", CLIP_224),
        _paired_with_llama3("llm2clip-openai-b16", "microsoft/LLM2CLIP-Openai-B-16",
                            "ecfb347eb3dcfeb2fbc2a2eae7de6ac5a001aaf8", CLIP_224),
    )
}
ALIASES = {"default": "llm2clip-openai-l14-336"}
DEFAULT_MODEL = "default"
DEMO_MODEL_DIR = Path(__file__).parent / "demo"


def resolve_model(name_or_dir: str | Path | None) -> ModelSpec:
    """A preset name, `demo`, or a directory holding `llm2search_model.json`."""
    key = str(name_or_dir) if name_or_dir is not None else DEFAULT_MODEL
    if key == "demo":
        if not (DEMO_MODEL_DIR / MODEL_FILE).exists():
            raise ModelLoadError(
                "the bundled demo model is not installed in this copy of llm2search; "
                "use --model DIR with a model made by `llm2search dev make-tiny-model DIR`"
            )
        return replace(load_local_spec(DEMO_MODEL_DIR), source="demo")
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return replace(PRESETS[key], source=key)
    path = Path(key).expanduser()
    if path.is_dir():
        return load_local_spec(path)
    known = ", ".join(sorted([*PRESETS, *ALIASES, "demo"]))
    raise ModelLoadError(
        f"unknown model {key!r}: use one of {known}, or a directory with {MODEL_FILE}"
    )


def load_local_spec(directory: Path) -> ModelSpec:
    """Read a local model directory: `llm2search_model.json` naming its vision and text parts."""
    directory = directory.resolve()
    meta_path = directory / MODEL_FILE
    if not meta_path.exists():
        raise ModelLoadError(
            f"{directory} is not a model directory (no {MODEL_FILE}); "
            "make one with `llm2search dev make-tiny-model DIR` or name a preset"
        )
    try:
        meta = json.loads(meta_path.read_text())
        text = meta.get("text_config", {})
        return ModelSpec(
            name=str(meta.get("name", directory.name)),
            vision=str(directory / meta.get("vision", "vision")),
            text=str(directory / meta.get("text", "text")),
            dim=int(meta["dim"]),
            preprocess=PreprocessConfig.from_dict(meta["preprocess"]),
            text_config=TextConfig(
                template_name=text.get("template_name"),
                pooling_mode=text.get("pooling_mode", "mean"),
                max_length=int(text.get("max_length", 512)),
            ),
            local=True,
            source=str(directory),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{meta_path} is malformed: {e}") from e


def spec_for_index(identity: dict, override: str | Path | None = None) -> ModelSpec:
    """The model an index was built with, or `override` if it is the same model (say, a moved
    local copy). Anything else is refused: its vectors would not be comparable."""
    source = override if override is not None else identity.get("source") or identity.get("name")
    try:
        spec = resolve_model(source)
    except ModelLoadError as e:
        raise ModelLoadError(
            f"this index was built with model {identity.get('name')!r} from {source}, which cannot "
            f"be loaded ({e}); pass --model with a copy of that model"
        ) from e
    if not identities_match(identity, spec.identity()):
        raise ModelMismatchError(
            f"this index was built with model {identity.get('name')!r} "
            f"({identity.get('fingerprint')}), not {spec.name!r} ({spec.fingerprint()}); query it "
            "with the same model, or rebuild it with `llm2search index --model ...` into a new --index"
        )
    return spec
