"""Text to unit vectors: llm2vec mean pooling, then LLM2CLIP's adapter (`get_text_features`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidQueryError
from .spec import ModelSpec

# llm2vec splits instruction from text on this marker; a query containing it would be cut.
LLM2VEC_SEPARATOR = "!@#$%^&*()"
# Tokens kept free for the prompt template llm2vec wraps around the text (Llama-3 header + eot).
TEMPLATE_RESERVE = 16
# Longest query text anyone may send (CLI, Python API, HTTP): a guard on work, far above the
# token limit of every model, which is what actually cuts a long query (see TextEncoder.prepare).
MAX_QUERY_CHARS = 2000


def token_limit(max_length: int) -> int:
    """Tokens of query text a model with llm2vec `max_length` reads; the rest is cut."""
    return max(1, max_length - TEMPLATE_RESERVE)


class TextEncoder:
    def __init__(self, l2v: Any, clip_model: Any, spec: ModelSpec, device: str, batch_size: int = 32):
        self.l2v = l2v
        self.clip_model = clip_model
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self._adapter_dtype = next(clip_model.text_adapter.parameters()).dtype

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def token_limit(self) -> int:
        return token_limit(self.spec.text_config.max_length)

    def clean(self, text: str) -> str:
        return self.prepare(text)[0]

    def prepare(self, text: str) -> tuple[str, bool]:
        """(the text the model reads, whether it was cut). Rejects empty text; drops llm2vec's
        separator; cuts to `token_limit` tokens, because llm2vec's pooling mask misaligns with
        the tokens of a text longer than that."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidQueryError("the query text is empty; give a sentence such as 'a dog on a beach'")
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidQueryError(f"the query text is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,}")
        text = " ".join(text.replace(LLM2VEC_SEPARATOR, " ").split())
        budget = self.token_limit
        tokenizer = self.l2v.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > budget:
            return tokenizer.decode(ids[:budget]).rstrip("\ufffd"), True  # drop a cut multi-byte char
        return text, False

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        cleaned = [self.clean(t) for t in texts]
        with torch.inference_mode():
            llm = self._pooled(cleaned)
            features = self.clip_model.get_text_features(llm.to(self._adapter_dtype)).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy()

    def _pooled(self, texts: list[str]) -> Any:
        """llm2vec's mean-pooled LLM vectors, on this encoder's device, in input order.

        What `LLM2Vec.encode` does on one device (instruction-less text, batches of similar
        length), never its other branch: when it sees more than one GPU it ignores `device=`,
        starts a process pool per call and pickles the whole model for every batch."""
        import torch

        l2v = self.l2v
        marked = [l2v._convert_to_str("", t) for t in texts]
        order = np.argsort([-len(t) for t in marked], kind="stable")  # less padding per batch
        parts = []
        for start in range(0, len(order), self.batch_size):
            batch = [l2v.prepare_for_tokenization(marked[i]) for i in order[start:start + self.batch_size]]
            features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                        for k, v in l2v.tokenize(batch).items()}
            parts.append(l2v.forward(features))
        pooled = torch.cat(parts)
        back = torch.from_numpy(np.argsort(order)).to(pooled.device)
        return pooled.index_select(0, back)
