"""What identifies a model pairing: weights, revisions, output dimension and preprocessing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODEL_FILE = "llm2search_model.json"  # describes a local model directory (vision/ + text/)


@dataclass(frozen=True)
class PreprocessConfig:
    """CLIP image preprocessing: shortest side to `image_size`, centre crop, normalise."""

    image_size: int = 336  # output is image_size x image_size
    resample: str = "bicubic"  # PIL filter used for the final resize
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        return cls(
            image_size=int(d["image_size"]),
            resample=str(d.get("resample", "bicubic")),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class TextConfig:
    """How llm2vec turns text into one LLM vector."""

    template_name: str | None = None  # set as config._name_or_path: llm2vec picks its prompt by it
    pooling_mode: str = "mean"
    max_length: int = 512


@dataclass(frozen=True)
class ModelSpec:
    """A vision tower (with the text adapter) paired with an llm2vec text model."""

    name: str  # preset name, or the local directory's own name
    vision: str  # hub id or local directory
    text: str  # hub id or local directory
    dim: int
    vision_revision: str | None = None
    text_revision: str | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    text_config: TextConfig = field(default_factory=TextConfig)
    local: bool = False  # True when vision/text are directories the user named
    source: str = ""  # what resolves to this spec again: preset name or model directory

    def fingerprint(self) -> str:
        """Stable id of the weights: hub ids + revisions, or a digest of local weight files."""
        if not self.local:
            return f"{self.vision}@{self.vision_revision}|{self.text}@{self.text_revision}"
        return "sha256:" + _digest_dirs([Path(self.vision), Path(self.text)])

    def identity(self) -> dict[str, Any]:
        """What the index records about the model; compared on every query."""
        return {
            "name": self.name,
            "source": self.source or self.name,
            "vision": self.vision,
            "vision_revision": self.vision_revision,
            "text": self.text,
            "text_revision": self.text_revision,
            "dim": self.dim,
            "local": self.local,
            "fingerprint": self.fingerprint(),
            "preprocess": asdict(self.preprocess),
            "text_config": asdict(self.text_config),
        }


def identities_match(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    keys = ("fingerprint", "dim", "preprocess", "text_config")
    return all(_normalise(recorded.get(k)) == _normalise(current.get(k)) for k in keys)


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples vs lists after a JSON round trip


def _digest_dirs(dirs: list[Path]) -> str:
    """Digest of configs and weights. Large weight files are sampled (header, start, middle, end),
    so fingerprinting an 8B checkpoint takes milliseconds yet any retrained weights differ."""
    h = hashlib.sha256()
    for d in dirs:
        for f in sorted(d.iterdir()):
            if f.suffix not in {".json", ".safetensors", ".bin", ".model"} or not f.is_file():
                continue
            h.update(f.name.encode())
            size = f.stat().st_size
            h.update(str(size).encode())
            with open(f, "rb") as fh:
                if size <= 8 << 20:
                    h.update(fh.read())
                    continue
                for offset in (0, size // 2, size - (1 << 20)):
                    fh.seek(offset)
                    h.update(fh.read(1 << 20))
    return h.hexdigest()
