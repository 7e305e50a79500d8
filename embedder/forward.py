"""One batch through the model on MLX: pad, run, pool, project (or score pairs); the lanes' `BatchRunner`."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .errors import ModelError
from .images import ImageRow
from .models.loading import LoadedModel
from .native import fastmath
from .native.build import native_build_env
from .pooling import pool, splade


@dataclass
class BatchForward:
    model: LoadedModel

    def launch(self, rows: list, splits: list[int], per_token: bool = False) -> mx.array:
        """One batch, evaluated asynchronously: token rows padded, run, pooled and projected, `splits` leading tokens
        of each left out of pooling (never its last); for a cross-encoder, each pair's logits, its second text (from
        its split on) of token type 1; `ImageRow`s through the vision tower. Rows keep their order. `per_token`:
        the encoder's last hidden state, every token's vector (token rows only), before pooling or projection; a
        row's split is how many of its leading tokens are attended, the rest (a ColBERT query's expansion) only
        attending."""
        images = [k for k, row in enumerate(rows) if isinstance(row, ImageRow)]
        if per_token:
            out = self._per_token(rows, splits)
        elif not images:
            out = self._texts(rows, splits)
        else:
            texts = sorted(set(range(len(rows))) - set(images))
            pixels = mx.array(np.stack([rows[k].pixels for k in images]))
            parts = [self.model.module.embed_images(pixels).astype(mx.float32)]
            if texts:
                parts.append(self._texts([rows[k] for k in texts], [splits[k] for k in texts]))
            out = mx.concatenate(parts)[mx.array(np.argsort(images + texts))]
        mx.async_eval(out)
        return out

    def _texts(self, rows: list[list[int]], splits: list[int]) -> mx.array:
        model = self.model
        lengths = [len(r) for r in rows]
        ids, mask = _padded(rows, model.tokenizer.pad_token_id)
        # No lock: MLX keeps tracing state and the compile cache per thread, and async_eval itself may wait
        # (at most 10 tasks in flight), which would stall the other lanes if held under one.
        if model.spec.scores is not None:
            token_types = (np.arange(ids.shape[1])[None, :] >= np.array(splits)[:, None]).astype(np.int32)
            return model.forward(mx.array(ids), mx.array(mask), mx.array(token_types)).astype(mx.float32)
        if (sparse := model.spec.splade) is not None:
            return splade(model.forward(mx.array(ids), mx.array(mask)), lengths, model.module.mlm, sparse.strategy,
                          twice=sparse.activation == "log1p_relu")
        pool_mask = mask.copy()
        for k, split in enumerate(splits):
            pool_mask[k, : min(split, lengths[k] - 1)] = 0
        out = pool(model.forward(mx.array(ids), mx.array(mask)), mx.array(pool_mask), model.spec.pooling)
        for layer in model.dense:
            out = layer(out)
        return out

    def _per_token(self, rows: list, attended: list[int]) -> mx.array:
        """Every token's last hidden state, each row's first `attended` tokens attended to, the others only
        attending: packed on the native path with their counts of keys where the model packs them, else MLX's padded
        path at every position."""
        ids, every_token = _padded(rows, self.model.tokenizer.pad_token_id)
        if all(split == len(row) for split, row in zip(attended, rows)):
            return self.model.forward(mx.array(ids), mx.array(every_token)).astype(mx.float32)
        keys = np.array(attended, np.int32)
        if fastmath.packs_query_only_rows(self.model.module):
            with fastmath.keys_per_row(keys):
                return self.model.forward(mx.array(ids), mx.array(every_token)).astype(mx.float32)
        attended_only = (np.arange(ids.shape[1]) < keys[:, None]).astype(np.int32)
        with fastmath.every_position():
            return self.model.forward(mx.array(ids), mx.array(attended_only)).astype(mx.float32)

    def collect(self, launched: mx.array) -> np.ndarray:
        """The batch's vectors (or scores) as float32, once computed; never a NaN or an infinity."""
        out = np.array(launched, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ModelError(f"the model produced non-finite values for a batch of {len(out)} input(s); "
                             f"try dtype float32 or bfloat16")
        return out

    def build_kernels(self) -> None:
        """A padded and an unpadded batch, once, inside `native_build_env`: the model's fused CPU kernels are built
        for this CPU now, at load, and later batches need neither the compiler nor a changed environment."""
        token = self.model.tokenizer.pad_token_id
        per_token = self.model.spec.multi_vector is not None  # a multi-vector model's batches: with unattended rows
        with native_build_env():
            for rows in ([[token] * 2, [token] * 3], [[token] * 3]):
                mx.eval(self.launch(rows, [2] * len(rows) if per_token else [0] * len(rows), per_token))


def _padded(rows: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows as one (rows, longest) array padded at the end, and its attention mask."""
    ids = np.full((len(rows), max(map(len, rows))), pad_token_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for k, row in enumerate(rows):
        ids[k, : len(row)] = row
        mask[k, : len(row)] = 1
    return ids, mask
