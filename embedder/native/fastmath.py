"""The encoder forward pass's GELU and attention, fast on MLX's CPU backend.

MLX's prebuilt CPU `erf` and `exp` are scalar loops on x86 (~90% of a BERT layer's time). Fused by `mx.compile`
and built for this CPU's vector units (`build`), the same built-in GELU formula runs 4-5x faster with the
same results. Attention on the CPU in float32 is our own fused C++ kernel (`kernels/attention.cpp`), which never
writes the scores to memory. Where neither can be built (no g++, not Linux) or for other dtypes, MLX's built-in
kernels run unchanged; on a GPU, GELU is fused by `mx.compile` too, and attention is MLX's
`scaled_dot_product_attention`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import ModelError
from . import kernels
from .build import native_kernels


def gelu(x: mx.array) -> mx.array:
    """The erf GELU that BERT-family models were trained with (MLX's erf: PyTorch's CPU approximation)."""
    if _fast_path(x) or mx.default_device() == mx.gpu:  # one fused kernel, not five element-wise passes
        return _gelu(x)
    return _gelu_formula(x)


_every_position = threading.local()


def native_heads(dtype: mx.Dtype, head_dim: int) -> bool:
    """Whether our attention kernel runs for this dtype and head size here, and so encoder layers run on a batch's
    real tokens alone (`PackedTokens`): the native CPU path; never inside `every_position`."""
    return not getattr(_every_position, "on", False) and _native(dtype) and head_dim <= kernels.max_head_dim()


_keys_per_row = threading.local()


def packs_query_only_rows(module: nn.Module) -> bool:
    """Whether `keys_per_row` runs here: the model packs its batches' tokens on the native path, and no layer's
    attention is windowed (a query-only token could find no key in its window)."""
    packs = getattr(module, "packs_tokens", None)
    return packs is not None and packs() and not getattr(module, "window", 0)


@contextlib.contextmanager
def keys_per_row(keys: np.ndarray):
    """Inside it, this thread's packed batches take only each row's first keys[b] tokens as keys; its other tokens
    attend without being attended to (a ColBERT query's expansion tokens), on the native path (where
    `packs_query_only_rows`)."""
    _keys_per_row.value = keys
    try:
        yield
    finally:
        _keys_per_row.value = None


@contextlib.contextmanager
def every_position():
    """Inside it, this thread's batches run on MLX's padded path, a state computed at every position, unattended
    ones too (a ColBERT query's expansion tokens look at the text without being looked at), where the native path
    computes real tokens alone."""
    _every_position.on = True
    try:
        yield
    finally:
        _every_position.on = False


@dataclass(frozen=True)
class PackedTokens:
    """A batch's real tokens row after row, without padding, on the native CPU path: the matmuls and element-wise
    kernels then never compute padding (17% of the tokens when 64 one-text requests share batches), and attention
    finds each sequence's rows by `starts`. Made by `of` for right-padded batches, as the tokenizer pads them."""

    rows: mx.array | None  # int32 (T,): each real token's place in the flattened (B * L) batch; None: no padding
    starts: np.ndarray  # int32 (B + 1,): the row each sequence starts at, then T
    shape: tuple[int, int]  # (B, L)
    keys: np.ndarray | None = None  # int32 (B,): each sequence's first rows that are keys (`keys_per_row`); None: all

    @property
    def longest(self) -> int:
        return int(np.diff(self.starts).max(initial=0))

    @classmethod
    def of(cls, attention_mask: mx.array, x: mx.array, head_dim: int) -> PackedTokens | None:
        """None off the native path or for a batch that is not right-padded. A batch without padding packs too
        (a reshape), for `encoder_layers`."""
        if not native_heads(x.dtype, head_dim):
            return None
        mask = np.asarray(attention_mask) != 0
        lengths = mask.sum(1)
        if not (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all():
            return None
        starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        rows = None if starts[-1] == mask.size else mx.array(np.flatnonzero(mask).astype(np.int32))
        return cls(rows, starts, mask.shape, getattr(_keys_per_row, "value", None))

    def pack(self, x: mx.array) -> mx.array:
        """(B, L, D) -> (T, D)."""
        flat = x.reshape(-1, x.shape[-1])
        return flat if self.rows is None else mx.take(flat, self.rows, axis=0)

    def unpack(self, x: mx.array | np.ndarray) -> mx.array:
        """(T, D) -> (B, L, D) in MLX, zeros at padding; NumPy (`encoder_layers`' output) is copied in."""
        x = mx.array(x) if isinstance(x, np.ndarray) else x
        if self.rows is None:
            return x.reshape(*self.shape, x.shape[-1])
        full = mx.zeros((self.shape[0] * self.shape[1], x.shape[-1]), x.dtype)
        full[self.rows] = x
        return full.reshape(*self.shape, x.shape[-1])


@dataclass(frozen=True)
class LayerParts:
    """An encoder layer's parts as its model holds them, for `encoder_layers`: post-LN (BERT's, MPNet's,
    NomicBERT's, GTE's) or, with `pre_norm`, pre-LN (ModernBERT's, `norm1` None where the first layer has none;
    T5's, with RMS norms, a feed-forward of two projections multiplied (`gate`), unscaled scores: `scale` 1).
    `rotary` turns its queries and keys, `window` bounds its attention (0: none)."""

    qkv: nn.Module  # the fused q/k/v projection
    attention_out: nn.Module
    norm1: nn.Module | None
    up: nn.Module  # gated: the value's rows, then the gate's
    act: object  # the feed-forward's activation (gated: the gate's, or the value's with `act_on_value`)
    down: nn.Module
    norm2: nn.Module
    heads: int
    gated: bool = False
    act_on_value: bool = False  # ModernBERT's GeGLU: act(value) * gate
    pre_norm: bool = False
    rotary: kernels.Rotary | None = None
    window: int = 0
    gate: nn.Module | None = None  # T5's: act(up(x)) * gate(x)
    scale: float | None = None  # attention's score scale; None: 1 / sqrt(head size)

    def feed_forward(self) -> str | None:
        """The native kernels' name for this feed-forward (`kernels.FEED_FORWARDS`), None where they have none.
        ReLU and the two-projection kinds run in pre-LN layers only (T5's)."""
        if self.gate is not None:
            kinds = {nn.gelu_approx: "tanh_gelu_times", gelu: "gelu_times"}
            return kinds.get(self.act) if self.pre_norm else None
        if not self.gated:
            return "gelu" if self.act is gelu else "relu" if self.act is nn.relu and self.pre_norm else None
        return _gate_kernel(self.act, self.act_on_value)


def encoder_layers(x: mx.array, packed: PackedTokens, layers: list[LayerParts],
                   position_bias: mx.array | None = None, rotary: kernels.Rotary | None = None) -> np.ndarray | None:
    """Encoder layers on packed hidden states, all in one native call (`kernels.encoder_layers`): a lane then gives
    up the GIL once a batch, not once a kernel (under 64-way server load lanes waited ~25% of their time to take it
    back after kernel calls). `position_bias` (heads, L, L) joins every layer's scores (MPNet), `rotary` turns the
    queries and keys of every layer whose parts carry no rotations of their own (NomicBERT, GTE). None where a part
    is not native (another activation or norm, a dequantizing layer): the caller then runs the layers kernel by
    kernel."""
    def native(layer: LayerParts) -> bool:
        norms = (layer.norm1, layer.norm2) if layer.norm1 is not None or not layer.pre_norm else (layer.norm2,)
        dense = _projections(layer)
        return (layer.feed_forward() is not None and all(_native_linear(d, x) for d in dense)
                and all(type(n) in (nn.LayerNorm, nn.RMSNorm) for n in norms))

    if not (layers and kernels.layers_available() and all(native(layer) for layer in layers)):
        return None

    small_batch = x.shape[0] < kernels.SMALL_BATCH_ROWS and _float_weight_bytes(layers) <= SMALL_BATCH_COPY_BYTES

    def projection(dense: nn.Module) -> kernels.Projection:
        small = dense.small_batch_weight() if small_batch and isinstance(dense, Linear) else None
        return kernels.Projection(_weight(dense), dense.get("bias"), small)

    def norm(n: nn.LayerNorm | nn.RMSNorm | None) -> kernels.Norm | None:
        return None if n is None else kernels.Norm(n.get("weight"), n.get("bias"), n.eps, isinstance(n, nn.RMSNorm))

    weights = [kernels.EncoderLayer(projection(layer.qkv), projection(layer.attention_out), norm(layer.norm1),
                                    projection(layer.up), projection(layer.down), norm(layer.norm2),
                                    layer.feed_forward(), None if layer.gate is None else projection(layer.gate),
                                    layer.pre_norm, layer.rotary or rotary, layer.window)
               for layer in layers]
    heads = layers[0].heads
    head_dim = weights[0].qkv.weight.shape[0] // (3 * heads)
    scale = layers[0].scale if layers[0].scale is not None else 1 / math.sqrt(head_dim)
    return kernels.encoder_layers(x, packed.starts, heads, scale, weights, position_bias, _stack_cache(layers[0].qkv),
                                  packed.keys)


def _stack_cache(module: nn.Module) -> dict:
    """The native layer structures' cache (`kernels.encoder_layers`), kept on the stack's first projection: it lives
    and goes with the model."""
    return _kept(module, "_native_stacks", None, lambda _: {})


def _kept(module: nn.Module, name: str, source: Any, make: Callable[[Any], Any]) -> Any:
    """`make(source)`, made at the first call and kept on `module` under `name` until `source` is replaced (an
    attribute, not a parameter: nothing saves or loads it)."""
    cached = module.__dict__.get(name)
    if cached is None or cached[0] is not source:
        cached = (source, make(source))
        object.__setattr__(module, name, cached)
    return cached[1]


# The memory the packed copies of a model's float32 projections (`Linear.small_batch_weight`) may take: 42 MB for
# all-MiniLM-L6-v2, 85 MB for a 12-layer 384-wide model; a 768-wide base model's 340 MB would be over, and its
# small batches stay in the BLAS.
SMALL_BATCH_COPY_BYTES = 256 * 2**20


def _float_weight_bytes(layers: list[LayerParts]) -> int:
    return sum(4 * d["weight"].size for layer in layers for d in _projections(layer) if isinstance(d, Linear))


def _projections(layer: LayerParts) -> tuple[nn.Module, ...]:
    return (layer.qkv, layer.attention_out, layer.up, layer.down, *(() if layer.gate is None else (layer.gate,)))


def self_attention(qkv: mx.array, n_heads: int, scale: float, mask: mx.array | PackedTokens | None,
                   bias: mx.array | None = None) -> mx.array:
    """Scaled dot-product self-attention from fused projections (B, L, 3 * H * D) to (B, L, H * D); `mask` is
    boolean (B, 1, 1, L), True at real tokens; `bias` (H, L, L) is added to the scaled scores (a relative position
    bias). Masked keys get exactly zero weight, masked (padding) queries zeros. With `PackedTokens` for the mask,
    (T, 3 * H * D) to (T, H * D), packed alike. (Rotary positions: `models.attention.Rotation.self_attention`.)
    """
    if isinstance(mask, PackedTokens):
        return kernels.self_attention(qkv, n_heads, scale, None, bias, starts=mask.starts, keys=mask.keys)
    B, L, width = qkv.shape
    D = width // (3 * n_heads)
    if (native_heads(qkv.dtype, D)
            and (mask is None or (mask.shape == (B, 1, 1, L) and mask.dtype == mx.bool_))
            and (bias is None or (bias.shape == (n_heads, L, L) and bias.dtype == mx.float32))):
        return kernels.self_attention(qkv, n_heads, scale, mask, bias)
    q, k, v = (qkv.reshape(B, L, 3, n_heads, D)[:, :, i].swapaxes(1, 2) for i in range(3))
    return attention(q, k, v, scale, mask, bias).swapaxes(1, 2).reshape(B, L, n_heads * D)


def linear_activation(dense: nn.Module, x: mx.array, act) -> mx.array:
    """act(dense(x)); the erf GELU after a float32 `Linear` as one native pass over the matmul's output."""
    if act is gelu and _native_linear(dense, x):
        return kernels.linear_gelu(x, _weight(dense), dense.get("bias"))
    return act(dense(x))


def linear_gated(dense: nn.Module, x: mx.array, act, act_on_value: bool = False) -> mx.array:
    """value * act(gate) (act(value) * gate with `act_on_value`, ModernBERT's GeGLU), value and gate the halves of
    dense(x); after a float32 `Linear` (or a packed one), one native pass over the matmul's output where `act` has
    a kernel (SiLU, the erf GELU, sigmoid; the erf GELU alone on the value)."""
    feed_forward = _gate_kernel(act, act_on_value)
    if feed_forward is not None and _native_linear(dense, x):
        return kernels.linear_glu(x, _weight(dense), dense.get("bias"), feed_forward)
    value, gate = mx.split(dense(x), 2, axis=-1)
    return act(value) * gate if act_on_value else value * act(gate)


def linear_add_norm(dense: nn.Module, x: mx.array, residual: mx.array, norm: nn.Module) -> mx.array:
    """norm(dense(x) + residual); after a float32 `Linear`, with a LayerNorm, one native pass over the matmul's
    output (MLX's CPU LayerNorm alone is a scalar loop: ~1 ms for 1,024 x 384)."""
    if isinstance(norm, nn.LayerNorm) and _native_linear(dense, x):
        return kernels.linear_add_layer_norm(x, _weight(dense), dense.get("bias"), residual, norm.get("weight"),
                                            norm.get("bias"), norm.eps)
    return norm(dense(x) + residual)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None,
              bias: mx.array | None = None) -> mx.array:
    """MLX's attention on (B, H, L, D) heads, with `self_attention`'s treatment of padding and bias (inside
    `every_position`, padding queries attend to the real keys instead of giving zeros)."""
    if mask is None:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)
    keep = mask.astype(q.dtype).swapaxes(-1, -2)  # zero values: a query with no key to attend gets zeros
    if bias is not None:
        mask = mx.where(mask, bias.astype(q.dtype), mx.array(-math.inf, q.dtype))
    out = mx.fast.scaled_dot_product_attention(q, k, v * keep, scale=scale, mask=mask)
    return out if getattr(_every_position, "on", False) else out * keep


def fast_cpu_kernels(dtype: mx.Dtype) -> bool:
    """Whether `dtype` arrays take the native CPU kernels here."""
    return dtype == mx.float32 and mx.default_device() == mx.cpu and native_kernels()


def _fast_path(x: mx.array) -> bool:
    return fast_cpu_kernels(x.dtype)


def _native(dtype: mx.Dtype) -> bool:
    return fast_cpu_kernels(dtype) and kernels.available()


def _native_linear(dense: nn.Module, x: mx.array) -> bool:
    if isinstance(dense, PackedLinear):
        return _native(x.dtype)
    return isinstance(dense, Linear) and dense["weight"].dtype == mx.float32 and _native(x.dtype)


def _weight(dense: nn.Module) -> mx.array | kernels.PackedWeight:
    return dense.packed if isinstance(dense, PackedLinear) else dense["weight"]


def _gelu_formula(x: mx.array) -> mx.array:
    return x * (1 + mx.erf(x / math.sqrt(2))) / 2


_gelu = mx.compile(_gelu_formula)


class Linear(nn.Linear):
    """nn.Linear; on the fast CPU path a matmul then a vectorized bias add, since MLX's CPU `addmm` first
    copies the broadcast bias into its output (BERT forward, same process, A/B: +5% at 8x256 and 128x32)."""

    def __call__(self, x: mx.array) -> mx.array:
        if "bias" in self and _fast_path(x):
            return x @ self["weight"].T + self["bias"]
        return super().__call__(x)

    def small_batch_weight(self) -> np.ndarray | None:
        """The weight packed once for `encoder_layers`' small batches (`kernels.pack_f32`), made at first use and
        again if the weight is replaced; it is a copy, as large as the weight."""
        return _kept(self, "_small_batches", self["weight"], kernels.pack_f32)


class PackedLinear(nn.Module):
    """A float32 `Linear` whose matmul runs on a weight packed once for our int8, float16 or bfloat16 kernel
    (`kernels.packed_matmul`: weights per output channel, activations per row); float32 in and out, so everything
    around it is unchanged. Made from a loaded `Linear` by `from_linear`; the packed weight is not a parameter
    (nothing saves or loads it)."""

    def __init__(self, packed: kernels.PackedWeight, bias: mx.array | None):
        super().__init__()
        self.packed = packed
        if bias is not None:
            self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, pack: Callable[[mx.array], kernels.PackedWeight]) -> PackedLinear:
        return cls(pack(linear["weight"]), linear.get("bias"))

    def __call__(self, x: mx.array) -> mx.array:
        return kernels.packed_matmul(x, self.packed, self.get("bias"))[0]

    @property
    def weight(self) -> mx.array:
        """A float16 or bfloat16 weight as the kernel multiplies it, for model code that reads a Linear's weight
        instead of calling it (mlx-embeddings' SigLIP pooling head splits its fused projection), unpacked at the
        first read; int8 layers, only ever our own encoders', keep none."""
        if isinstance(self.packed, kernels.Int8Weight):
            raise AttributeError("an int8 layer keeps no float weight")
        return _kept(self, "_unpacked", self.packed, kernels.unpack)  # not on every batch that reads it


# A gated feed-forward's gate activation -> its native kernels' name (`kernels.FEED_FORWARDS`).
GATES = {nn.silu: "gated_silu", gelu: "gated_gelu", mx.sigmoid: "gated_sigmoid"}


def _gate_kernel(act, act_on_value: bool) -> str | None:
    """The native kernels' name for value * act(gate), or act(value) * gate (the erf GELU only); None: none."""
    if act_on_value:
        return "gelu_gated" if act is gelu else None
    return GATES.get(act)


def activation(name: str):
    """A config's `hidden_act` as a function; the exact GELU goes through the fast kernel above."""
    table = {"gelu": gelu, "gelu_new": nn.gelu_approx, "gelu_pytorch_tanh": nn.gelu_approx,
             "gelu_fast": nn.gelu_approx, "relu": nn.relu, "silu": nn.silu}
    if name not in table:
        raise ModelError(f"unsupported activation {name!r}; supported: {', '.join(table)}")
    return table[name]
