"""Late interaction (ColBERT): a query's or a document's token rows as the model reads them, its token vectors as
sentence-transformers' MultiVectorEncoder keeps them, and MaxSim between them (NumPy; the encoder runs in the
engine's per-token batches)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputTooLong, ModelError
from .models.multi_vector_config import MultiVectorSpec
from .pooling import normalize as l2_normalize
from .tokenizer import TextTokenizer

_MASK_TOKENS = ("[MASK]", "<mask>")


@dataclass(frozen=True)
class MultiVectorRows:
    """A multi-vector model's rules, resolved against its tokenizer and projection once, at load."""

    spec: MultiVectorSpec
    model_length: int  # the tokenizer's cut, the longest either side keeps
    end: tuple[int, ...]  # the special tokens after a text ([SEP]), kept when a row is cut
    skip_ids: np.ndarray  # the skiplist's token ids
    expansion_id: int | None  # what a query is padded with
    projection: tuple[np.ndarray, ...]  # token-level Dense weights, transposed (in, out), applied in turn
    long_input: str = "truncate"

    @classmethod
    def of(cls, spec: MultiVectorSpec, tokenizer: TextTokenizer, projection: Sequence[np.ndarray],
           model_dir: Path, model_length: int) -> MultiVectorRows:
        skip = sorted({i for word in spec.skiplist if (i := tokenizer.token_id(word)) is not None})
        expansion_id = None
        if spec.expansion is not None:
            names = (spec.expansion.token,) if spec.expansion.token else (_mask_token(model_dir), *_MASK_TOKENS)
            expansion_id = next((i for name in names if name and (i := tokenizer.token_id(name)) is not None), None)
            if expansion_id is None:
                raise ModelError(f"{model_dir}: the tokenizer has no {' or '.join(n for n in names if n)} token to "
                                 "expand queries with")
        return cls(spec, model_length, tokenizer.special_tokens()[1], np.array(skip, np.int64), expansion_id,
                   tuple(projection), tokenizer.long_input)

    def rows(self, rows: Sequence[Sequence[int]], query: bool) -> tuple[list[list[int]], list[int]]:
        """Each row cut to its side's length (its end tokens kept) and, for a query, padded with the expansion
        token up to the expansion's length; and how many leading tokens of each the encoder attends to (all, but
        unattended expansion tokens)."""
        length = self.spec.task_length(query, self.model_length)
        expansion = self.spec.expansion if query else None
        out, keys = [], []
        for i, row in enumerate(rows):
            row = list(row)
            if len(row) > length:
                if self.long_input == "error" and not (expansion and expansion.fixed):
                    raise InputTooLong(f"input {i} has {len(row)} tokens, more than this model's "
                                       f"{'query' if query else 'document'} length of {length}", index=i)
                row = row[:length - len(self.end)] + list(self.end)
            real = len(row)
            if expansion is not None and real < expansion.length:
                row += [self.expansion_id] * (expansion.length - real)
            out.append(row)
            keys.append(len(row) if expansion is None or expansion.attend else real)
        return out, keys

    def vectors(self, row: Sequence[int], states: np.ndarray, query: bool, dimensions: int | None = None) -> np.ndarray:
        """One row's token vectors as the model keeps them: projected, its skiplisted tokens dropped (documents, by
        default), L2-normalized; cut to `dimensions` (else its saved `truncate_dim`) and normalized again."""
        out = states
        for weight in self.projection:
            out = out @ weight
        if ("query" if query else "document") in self.spec.skiplist_tasks and len(self.skip_ids):
            out = out[~np.isin(np.asarray(row), self.skip_ids)]
        if self.spec.normalize:
            out = l2_normalize(out)
        if (width := dimensions or self.spec.truncate_dim) is not None:
            out = l2_normalize(out[:, :width])
        return np.ascontiguousarray(out, np.float32)


def projections(dense: Sequence) -> list[np.ndarray]:
    """A multi-vector model's token-level Dense layers (`models.loading.DenseLayer`) as NumPy (in, out) weights;
    ColBERT's are linear maps, without bias or activation."""
    out = []
    for layer in dense:
        if layer.bias is not None or layer.activation != "identity":
            raise ModelError("a multi-vector model's Dense layers must be linear (no bias, Identity activation)")
        out.append(np.array(layer.weight, np.float32).T.copy())
    return out


def maxsim(query: np.ndarray, document: np.ndarray, mean: bool = False) -> float:
    """Late interaction: each query vector's best dot product with a document vector, summed (`mean`: averaged
    over the query's vectors)."""
    if not len(query) or not len(document):
        return 0.0
    best = (query @ document.T).max(axis=1)
    return float(best.mean() if mean else best.sum())


def _mask_token(model_dir: Path) -> str | None:
    """The tokenizer's mask token, as tokenizer_config.json names it."""
    path = model_dir / "tokenizer_config.json"
    try:
        token = json.loads(path.read_text(encoding="utf-8")).get("mask_token") if path.exists() else None
    except (OSError, ValueError):
        return None
    return token.get("content") if isinstance(token, dict) else token
