"""The query side of an inference-free SPLADE model (sentence-transformers' SparseStaticEmbedding, OpenSearch's
doc-only encoders): a query's vector weighs each vocabulary token it holds by a fixed weight, an IDF, with no
encoder; its documents go through the model as any SPLADE model's do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from .errors import ModelError
from .models.st_config import tokenizer_max_length
from .tokenizer import TextTokenizer, load_tokenizer

_DEFAULT_LENGTH = 512  # where the module's tokenizer names no model_max_length


class QueryTokens(list):
    """A query's token ids for `StaticSparse`: `EmbeddingEngine.submit` weighs them from the table instead of
    running the encoder."""


@dataclass(frozen=True)
class StaticSparse:
    tokenizer: TextTokenizer
    weights: np.ndarray  # (vocabulary,) float32: each token's weight
    max_length: int  # tokens a query keeps, as the module's tokenizer cuts (no special tokens)

    @classmethod
    def load(cls, folder: Path) -> StaticSparse:
        try:
            weights = np.array(mx.load(str(folder / "model.safetensors"))["weight"], np.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelError(f"{folder}: cannot read the query weights (model.safetensors 'weight'): {e}") from e
        length = tokenizer_max_length(folder) or _DEFAULT_LENGTH
        return cls(load_tokenizer(folder, length, False, "truncate"), weights.reshape(-1), length)

    def rows(self, texts: Sequence[str], prompt: str | None) -> list[QueryTokens]:
        """Each query's token ids, without special tokens, cut at `max_length`."""
        return [QueryTokens(found.ids[:self.max_length]) for found in self.tokenizer.whole_tokens(texts, False, prompt)]

    def vectors(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """(rows, vocabulary): each token a row holds, weighed once however often it comes."""
        out = np.zeros((len(rows), len(self.weights)), np.float32)
        for k, row in enumerate(rows):
            held = np.unique(np.asarray(row, np.int64))
            if len(held) and (held[0] < 0 or held[-1] >= len(self.weights)):
                raise ModelError(f"input {k} has a token id outside the query weights' vocabulary")
            out[k, held] = self.weights[held]
        return out
