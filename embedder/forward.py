"""One batch through the model on MLX: pad, run, pool, project; the lanes' `BatchRunner`."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .errors import ModelError
from .models.loading import LoadedModel
from .native.build import native_build_env
from .pooling import pool


@dataclass
class BatchForward:
    model: LoadedModel

    def launch(self, rows: list[list[int]], skips: list[int]) -> mx.array:
        """One padded forward pass and its pooling, evaluated asynchronously; `skips` leading tokens of each row
        are left out of pooling (never its last)."""
        model = self.model
        lengths = [len(r) for r in rows]
        ids = np.full((len(rows), max(lengths)), model.tokenizer.pad_token_id, np.int32)
        mask = np.zeros(ids.shape, np.int32)
        for k, row in enumerate(rows):
            ids[k, : lengths[k]] = row
            mask[k, : lengths[k]] = 1
        pool_mask = mask.copy()
        for k, skip in enumerate(skips):
            pool_mask[k, : min(skip, lengths[k] - 1)] = 0
        # No lock: MLX keeps tracing state and the compile cache per thread, and async_eval itself may wait
        # (at most 10 tasks in flight), which would stall the other lanes if held under one.
        hidden = model.forward(mx.array(ids), mx.array(mask))
        vectors = pool(hidden, mx.array(pool_mask), model.spec.pooling)
        for layer in model.dense:
            vectors = layer(vectors)
        mx.async_eval(vectors)
        return vectors

    def collect(self, vectors: mx.array) -> np.ndarray:
        """The batch's vectors as float32, once computed; never a NaN or an infinity."""
        out = np.array(vectors, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ModelError(f"the model produced non-finite values for a batch of {len(out)} input(s); "
                             f"try dtype float32 or bfloat16")
        return out

    def build_kernels(self) -> None:
        """A padded and an unpadded batch, once, inside `native_build_env`: the model's fused CPU kernels are built
        for this CPU now, at load, and later batches need neither the compiler nor a changed environment."""
        token = self.model.tokenizer.pad_token_id
        with native_build_env():
            for rows in ([[token] * 2, [token] * 3], [[token] * 3]):
                mx.eval(self.launch(rows, [0] * len(rows)))
