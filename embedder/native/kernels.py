"""Our C++ CPU kernels (`embedder/native/csrc`), run on MLX arrays' memory: MLX has no CPU custom-kernel API.

Each call checks every buffer it passes (dtype, shape, C order), runs a kernel on them through ctypes (which lets
other threads run meanwhile) and returns an MLX array. Kernels write in place into an MLX array that the call
itself makes and that nothing else holds (a matmul's output, or a new zeroed array), through a NumPy view of its
memory (NumPy views of an evaluated MLX array share it, as MLX documents), so no other array can see the write
and nothing is copied back. A kernel reports failure (an exception inside it, no kernel for a head size, a NaN
where int8 or float16 must round) as a status, raised here as ModelError. float32 on the CPU only; `available()`,
`int8_available()`, `f16_available()` and `bf16_available()` say whether the kernels built here.

`encoder_layers` runs a stack of encoder layers (post-LN or pre-LN) in one call (csrc/encoder_layer.cpp: the
kernels above and the loaded BLAS's sgemm, by function pointer) and returns NumPy.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from types import SimpleNamespace

import mlx.core as mx
import numpy as np

from ..errors import ModelError
from . import mkl
from .blas import sgemm
from .build import native_library

_PTR, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_STATUS = {1: "has no kernel for this head size", 2: "ran out of memory", 3: "failed",  # csrc/boundary.h
           4: "met a NaN or infinite value"}


@functools.cache
def _kernels() -> SimpleNamespace | None:
    attention, layer_ops = native_library("attention"), native_library("layer_ops")
    if attention is None or layer_ops is None:
        return None
    kernels = SimpleNamespace(attention=attention.embed_self_attention, bias_gelu=layer_ops.embed_bias_gelu,
                              bias_glu=layer_ops.embed_bias_glu, act_times=layer_ops.embed_act_times,
                              add_layer_norm=layer_ops.embed_add_layer_norm,
                              max_head_dim=attention.embed_max_head_dim())
    kernels.attention.argtypes = [_PTR] * 6 + [_INT, _PTR] + [_INT] * 4 + [_FLOAT]
    kernels.bias_gelu.argtypes = [_PTR] * 2 + [_INT] * 2
    kernels.bias_glu.argtypes = [_PTR] * 2 + [_INT] * 3
    kernels.act_times.argtypes = [_PTR] * 2 + [ctypes.c_long, _INT]
    kernels.add_layer_norm.argtypes = [_PTR] * 5 + [_INT] * 2 + [_FLOAT, _INT]
    for kernel in (kernels.attention, kernels.bias_gelu, kernels.bias_glu, kernels.act_times, kernels.add_layer_norm):
        kernel.restype = _INT
    return kernels


def _typed_library(name: str, supported: str, signatures: dict[str, tuple[list, type]]) -> ctypes.CDLL | None:
    """A kernel library built here whose `supported()` probe says this CPU runs it, each function typed as
    `signatures` says (name -> argtypes, restype); None otherwise."""
    library = native_library(name)
    if library is None or not getattr(library, supported)():
        return None
    for function, (argtypes, restype) in signatures.items():
        kernel = getattr(library, function)
        kernel.argtypes, kernel.restype = argtypes, restype
    return library


@functools.cache
def _int8_kernels() -> ctypes.CDLL | None:
    return _typed_library("int8_matmul", "embed_int8_supported", {
        "embed_int8_packed_bytes": ([_INT, _INT], ctypes.c_long),
        "embed_int8_pack": ([_PTR, _INT, _INT, _PTR, _PTR, _PTR], _INT),
        "embed_int8_matmul": ([_PTR, _INT, _INT, _PTR, _PTR, _PTR, _PTR, _INT, _PTR], _INT),
        "embed_int8_use_mkl": ([_PTR], _INT),
    })


@functools.cache
def _f16_kernels() -> ctypes.CDLL | None:
    return _typed_library("f16_matmul", "embed_f16_supported", {
        "embed_f16_packed_halves": ([_INT, _INT], ctypes.c_long),
        "embed_f16_pack": ([_PTR, _INT, _INT, _PTR, _PTR], _INT),
        "embed_f16_matmul": ([_PTR, _INT, _INT, _PTR, _PTR, _PTR, _INT, _PTR], _INT),
    })


@functools.cache
def _bf16_kernels() -> ctypes.CDLL | None:
    return _typed_library("bf16_matmul", "embed_bf16_supported", {
        "embed_bf16_packed_halves": ([_INT, _INT], ctypes.c_long),
        "embed_bf16_pack": ([_PTR, _INT, _INT, _PTR], _INT),
        "embed_bf16_matmul": ([_PTR, _INT, _INT, _PTR, _PTR, _INT, _PTR], _INT),
        "embed_bf16_use_mkl": ([_PTR], _INT),
    })


@functools.cache
def onemkl(dtype: str) -> bool:
    """Whether `dtype`'s ("bfloat16" or "int8") weights are kept for and multiplied by oneMKL (`mkl.gemm`):
    decided once a process, at the first such weight packed, so that a float32 run never loads it."""
    gemm = mkl.gemm(dtype)
    if gemm is not None and dtype == "bfloat16":
        _bf16_kernels().embed_bf16_use_mkl(gemm)
    elif gemm is not None:
        _int8_kernels().embed_int8_use_mkl(gemm)
    return gemm is not None


@functools.cache
def _f32_kernels() -> ctypes.CDLL | None:
    return _typed_library("f32_matmul", "embed_f32_supported", {
        "embed_f32_packed_floats": ([_INT, _INT], ctypes.c_long),
        "embed_f32_pack": ([_PTR, _INT, _INT, _PTR], _INT),
        "embed_f32_matmul": ([_PTR, _INT, _INT, _PTR, _PTR, _INT, _PTR], _INT),
    })


class _LayerKernels(ctypes.Structure):  # csrc/encoder_layer.cpp's EmbedKernels
    _fields_ = [(name, _PTR) for name in ("sgemm", "int8_matmul", "f16_matmul", "bf16_matmul", "f32_matmul",
                                          "attention", "bias_gelu", "bias_glu", "act_times", "add_layer_norm")]


class _Projection(ctypes.Structure):  # EmbedProjection
    _fields_ = [*((name, _PTR) for name in ("weight", "f32_packed", "packed", "f16_packed", "bf16_packed", "scales",
                                            "sums", "bias")),
                ("n", _INT), ("k", _INT)]


class _Norm(ctypes.Structure):  # EmbedNorm
    _fields_ = [("weight", _PTR), ("bias", _PTR), ("eps", _FLOAT), ("present", _INT), ("rms", _INT)]


class _Rotary(ctypes.Structure):  # csrc/attention.cpp's EmbedRotary
    _fields_ = [("cos", _PTR), ("sin", _PTR), ("dims", _INT), ("interleaved", _INT)]


class _Layer(ctypes.Structure):  # EmbedLayer
    _fields_ = [("qkv", _Projection), ("attention_out", _Projection), ("norm1", _Norm), ("up", _Projection),
                ("down", _Projection), ("gate", _Projection), ("norm2", _Norm), ("feed_forward", _INT),
                ("pre_norm", _INT), ("rotary", ctypes.POINTER(_Rotary)), ("window", _INT)]


# EmbedLayer's feed_forward: GELU(up(x)); value * act(gate) from the halves of up(x), or act(value) * gate (the
# gate numbers of csrc/layer_ops.cpp's embed_bias_glu); ReLU(up(x)); act(up(x)) * gate(x) from two projections.
FEED_FORWARDS = {"gelu": 0, "gated_silu": 1, "gated_gelu": 2, "gated_sigmoid": 3, "gelu_gated": 4, "relu": 5,
                 "tanh_gelu_times": 6, "gelu_times": 7}
HALVES_GATED = ("gated_silu", "gated_gelu", "gated_sigmoid", "gelu_gated")  # up(x)'s halves, value and gate


@functools.cache
def _layer_kernel() -> tuple[ctypes._CFuncPtr, _LayerKernels] | None:
    """The one-call encoder layers and the table of the kernels they call; None where one of them is missing."""
    library, kernels, blas_sgemm = native_library("encoder_layer"), _kernels(), sgemm()
    if library is None or kernels is None or blas_sgemm is None:
        return None
    int8, f16, bf16, f32 = _int8_kernels(), _f16_kernels(), _bf16_kernels(), _f32_kernels()
    table = _LayerKernels(*(None if f is None else ctypes.cast(f, _PTR).value for f in (
        blas_sgemm, int8 and int8.embed_int8_matmul, f16 and f16.embed_f16_matmul, bf16 and bf16.embed_bf16_matmul,
        f32 and f32.embed_f32_matmul, kernels.attention, kernels.bias_gelu, kernels.bias_glu, kernels.act_times,
        kernels.add_layer_norm)))
    layers = library.embed_encoder_layers
    layers.argtypes = [_PTR, _PTR, _INT, _PTR, _PTR, _PTR, _PTR, _INT, _INT, _INT, _FLOAT, _PTR]
    layers.restype = _INT
    return layers, table


def available() -> bool:
    return _kernels() is not None


def int8_available() -> bool:
    """Whether the int8 matmul runs here: the kernels built, for a CPU with AVX512-VNNI."""
    return available() and _int8_kernels() is not None


def f16_available() -> bool:
    """Whether the float16 matmul runs here: the kernels built, for a CPU with AVX512-FP16."""
    return available() and _f16_kernels() is not None


def bf16_available() -> bool:
    """Whether the bfloat16 matmul runs here: the kernels built, for a CPU with AVX512-BF16 (Intel since Cooper
    Lake, AMD since Zen 4)."""
    return available() and _bf16_kernels() is not None


@dataclass(frozen=True)
class Int8Weight:
    """A Linear's (out, in) weight as int8, symmetric per output channel, packed for `packed_matmul`."""

    packed: np.ndarray  # int8, 64 output channels by the whole depth, four inputs a lane
    scales: np.ndarray  # float32, one per output channel (padded to a multiple of 64)
    sums: np.ndarray  # int32, each channel's int8 values summed, to take the activations' zero point out
    shape: tuple[int, int]


@dataclass(frozen=True)
class F16Weight:
    """A Linear's (out, in) weight as float16, scaled per output channel by a power of two to a peak in [1, 2),
    packed for `packed_matmul`."""

    packed: np.ndarray  # uint16 (float16 bits), 64 output channels by the whole depth, two inputs a lane
    scales: np.ndarray  # float32, each output channel's power of two (padded to a multiple of 64)
    shape: tuple[int, int]


@dataclass(frozen=True)
class BF16Weight:
    """A Linear's (out, in) weight rounded to bfloat16, packed for `packed_matmul`: no scales, bfloat16 has
    float32's range."""

    packed: np.ndarray  # uint16 (bfloat16 bits), 64 output channels by the whole depth, two inputs a lane
    shape: tuple[int, int]
    rows: bool = False  # packed holds the plain (out, in) rows instead, for oneMKL (`onemkl`)


PackedWeight = Int8Weight | F16Weight | BF16Weight


def pack_int8(weight: mx.array) -> Int8Weight:
    """`weight` (out, in), any float type, quantized and packed once, at load."""
    n, k = weight.shape
    data = _buffer(_float32(weight), (n, k), mx.float32, "weight")
    onemkl("int8")  # first: it decides the layout, and so the size
    size, channels = _int8_kernels().embed_int8_packed_bytes(n, k), -(-n // 64) * 64  # scales padded to panels
    packed = Int8Weight(np.empty(size, np.int8), np.empty(channels, np.float32), np.empty(channels, np.int32), (n, k))
    _check(_int8_kernels().embed_int8_pack(data.ctypes.data, n, k, packed.packed.ctypes.data,
                                            packed.scales.ctypes.data, packed.sums.ctypes.data), "int8 pack")
    return packed


def pack_f16(weight: mx.array) -> F16Weight:
    """`weight` (out, in), any float type, rounded to float16 and packed once, at load."""
    n, k = weight.shape
    data = _buffer(_float32(weight), (n, k), mx.float32, "weight")
    size = _f16_kernels().embed_f16_packed_halves(n, k)
    packed = F16Weight(np.empty(size, np.uint16), np.empty(size // (-(-k // 2) * 2), np.float32), (n, k))
    _check(_f16_kernels().embed_f16_pack(data.ctypes.data, n, k, packed.packed.ctypes.data,
                                          packed.scales.ctypes.data), "float16 pack")
    return packed


def pack_bf16(weight: mx.array) -> BF16Weight:
    """`weight` (out, in), any float type, rounded to bfloat16 and packed once, at load."""
    n, k = weight.shape
    data = _buffer(_float32(weight), (n, k), mx.float32, "weight")
    rows = onemkl("bfloat16")
    packed = BF16Weight(np.empty(_bf16_kernels().embed_bf16_packed_halves(n, k), np.uint16), (n, k), rows)
    _check(_bf16_kernels().embed_bf16_pack(data.ctypes.data, n, k, packed.packed.ctypes.data), "bfloat16 pack")
    return packed


def _float32(weight: mx.array) -> mx.array:
    """A weight as stored (a bfloat16 or float16 checkpoint's too) in float32, for packing: only one layer's is
    ever made at a time."""
    narrower = mx.issubdtype(weight.dtype, mx.floating) and weight.dtype != mx.float32
    return weight.astype(mx.float32) if narrower else weight


def unpack(weight: F16Weight | BF16Weight) -> mx.array:
    """The (out, in) float32 weight `pack_f16` or `pack_bf16` packed, as its rounding left it."""
    (n, k), depth = weight.shape, -(-weight.shape[1] // 2) * 2
    if isinstance(weight, BF16Weight) and weight.rows:
        return mx.array((weight.packed.reshape(n, k).astype(np.uint32) << 16).view(np.float32))
    panels = weight.packed.reshape(-1, depth // 2, 4, 16, 2).transpose(0, 2, 3, 1, 4).reshape(-1, depth)[:n, :k]
    if isinstance(weight, BF16Weight):
        return mx.array((panels.astype(np.uint32) << 16).view(np.float32))
    return mx.array(panels.view(np.float16).astype(np.float32) * weight.scales[:n, None])


def packed_matmul(x: mx.array, weight: PackedWeight, bias: mx.array | None = None) -> tuple[mx.array, np.ndarray]:
    """x @ weight.T (+ bias) on a weight packed at load: int8 multiplies (x quantized per row, asymmetric),
    float16 ones (x scaled per row) or bfloat16 ones (x rounded); a new float32 array, and a writable view of its
    memory. The kernel writes into memory MLX allocated (from its buffer cache): a NumPy buffer handed to MLX
    afterwards would be copied, and that copy took ~17% of a sentence batch's time."""
    n, k = weight.shape
    if x.dtype != mx.float32 or x.shape[-1] != k:
        raise ModelError(f"packed matmul: x is {_described(x.dtype, x.shape)}, the weight takes {k} float32 inputs")
    data = _buffer(x, tuple(x.shape), mx.float32, "x")
    y = mx.zeros((*x.shape[:-1], n), mx.float32)
    out = _writable(y)
    rows, bias_address = data.size // k, _address(_vector(bias, n, "bias"))
    if isinstance(weight, Int8Weight):
        _check(_int8_kernels().embed_int8_matmul(data.ctypes.data, rows, k, weight.packed.ctypes.data,
                                                  weight.scales.ctypes.data, weight.sums.ctypes.data, bias_address, n,
                                                  out.ctypes.data), "int8 matmul")
    elif isinstance(weight, BF16Weight):
        _check(_bf16_kernels().embed_bf16_matmul(data.ctypes.data, rows, k, weight.packed.ctypes.data, bias_address,
                                                  n, out.ctypes.data), "bfloat16 matmul")
    else:
        _check(_f16_kernels().embed_f16_matmul(data.ctypes.data, rows, k, weight.packed.ctypes.data,
                                                weight.scales.ctypes.data, bias_address, n, out.ctypes.data),
               "float16 matmul")
    return y, out


SMALL_BATCH_ROWS = 512  # below it `pack_f32`'s kernel beats the BLAS (csrc/f32_matmul.cpp)


def pack_f32(weight: mx.array) -> np.ndarray | None:
    """`weight` (out, in), float32, packed for `encoder_layers`' small batches; None where that kernel does not run
    here (no AVX2 with FMA)."""
    library = _f32_kernels()
    if library is None:
        return None
    n, k = weight.shape
    data = _buffer(weight, (n, k), mx.float32, "weight")
    packed = np.empty(library.embed_f32_packed_floats(n, k), np.float32)
    _check(library.embed_f32_pack(data.ctypes.data, n, k, packed.ctypes.data), "f32 pack")
    return packed


def layers_available() -> bool:
    """Whether `encoder_layers` runs here: our kernels built and the loaded BLAS's sgemm is at hand."""
    return _layer_kernel() is not None


@dataclass(frozen=True)
class Projection:
    """One of a layer's x @ weight.T + bias, float32, int8, float16 or bfloat16; for a batch under
    `SMALL_BATCH_ROWS` rows a float32 weight may come packed too (`pack_f32`), and runs so."""

    weight: mx.array | PackedWeight
    bias: mx.array | None
    small_batches: np.ndarray | None = None


@dataclass(frozen=True)
class Norm:
    weight: mx.array | None
    bias: mx.array | None
    eps: float
    rms: bool = False  # T5's RMS norm: no mean taken out


@dataclass(frozen=True)
class EncoderLayer:
    """An encoder layer's weights: attention (fused q/k/v, output), then the feed-forward, by its `FEED_FORWARDS`
    name (a gated one's `up` holds the value's rows, then the gate's). Post-LN, or with `pre_norm` each block's
    input normed instead (`norm1` None: not normed); `rotary` turns queries and keys, `window` bounds attention."""

    qkv: Projection
    attention_out: Projection
    norm1: Norm | None
    up: Projection
    down: Projection
    norm2: Norm
    feed_forward: str = "gelu"
    gate: Projection | None = None  # the second projection of a feed-forward that multiplies two ("..._times")
    pre_norm: bool = False
    rotary: Rotary | None = None
    window: int = 0


@dataclass(frozen=True)
class Rotary:
    """RoPE's rotations for positions 0 to L - 1: cos and sin float32 (L, dims / 2), turning pairs (i, i + dims / 2)
    of each query and key head's first `dims` floats, or (2i, 2i + 1) when `interleaved`."""

    cos: np.ndarray
    sin: np.ndarray
    interleaved: bool

    def structure(self, length: int, head_dim: int) -> _Rotary:
        """The kernels' view, once the tables are checked to cover `length` positions of `head_dim` heads; the
        tables must outlive its use."""
        rows, half = self.cos.shape
        if (self.sin.shape != self.cos.shape or rows < length or 2 * half > head_dim
                or not all(t.dtype == np.float32 and t.flags.c_contiguous for t in (self.cos, self.sin))):
            raise ModelError(f"native attention: rotary tables {self.cos.shape} do not cover {length} positions of "
                             f"{head_dim}-wide heads")
        return _Rotary(self.cos.ctypes.data, self.sin.ctypes.data, 2 * half, int(self.interleaved))


def encoder_layers(x: mx.array, starts: np.ndarray, heads: int, scale: float, layers: list[EncoderLayer],
                   position_bias: mx.array | None = None, cache: dict | None = None,
                   keys: np.ndarray | None = None) -> np.ndarray:
    """Encoder layers applied in turn to packed rows (sequence b in rows starts[b] to starts[b + 1]), in one native
    call, into a new NumPy array: the GIL is given up and taken back once a batch, not once a kernel, and no step
    waits for MLX's stream thread. `position_bias` (heads, L, L), by position in the sequence, is added to every
    layer's scaled scores (MPNet). `cache` (one per model, kept with it) keeps the layers' structures from batch to
    batch: building them was ~6% of a lane's time on a server's small batches. `keys`: as `self_attention`'s."""
    run, table = _layer_kernel()
    data = _buffer(x, tuple(x.shape), mx.float32, "x")
    rows, dim = data.shape
    longest = _longest(starts, rows, "encoder layers")
    bias = None if position_bias is None else _buffer(position_bias, (heads, longest, longest), mx.float32, "bias")
    head_dim = layers[0].qkv.weight.shape[0] // (3 * heads)
    key = _stack_key(layers)
    stack = None if cache is None else cache.get(key)
    if stack is None:
        stack = _layer_stack(layers, dim)  # the structures, and the arrays they point into
        if cache is not None:
            if len(cache) >= 4:  # a model's variants are few (small batches or not): a new weight starts over
                cache.clear()
            cache[key] = stack
    structures, _ = stack
    turns = [None if l.rotary is None else l.rotary.structure(longest, head_dim) for l in layers]
    if any(turns):  # per batch (the tables cover its longest sequence), on a copy: lanes share the cached one
        structures = type(structures).from_buffer_copy(structures)
        for structure, turn in zip(structures, turns):
            structure.rotary = None if turn is None else ctypes.pointer(turn)
    y = np.empty_like(data)
    _check(run(ctypes.byref(table), structures, len(layers), data.ctypes.data, starts.ctypes.data,
               _address(_keys(keys, len(starts) - 1)), _address(bias), len(starts) - 1, longest, heads, scale,
               y.ctypes.data), "encoder layers")
    return y


def _stack_key(layers: list[EncoderLayer]) -> tuple:
    """What a stack's structures are made of, by identity: the same arrays (held by the cache, so no id is reused
    while it is cached) give the same structures."""
    def projection(p: Projection | None) -> tuple | None:
        return None if p is None else (id(p.weight), id(p.bias), id(p.small_batches))

    def norm(p: Norm | None) -> tuple | None:
        return None if p is None else (id(p.weight), id(p.bias), p.eps, p.rms)

    return tuple((projection(l.qkv), projection(l.attention_out), norm(l.norm1), projection(l.up),
                  projection(l.down), projection(l.gate), norm(l.norm2), l.feed_forward, l.pre_norm, l.window)
                 for l in layers)


def _layer_stack(layers: list[EncoderLayer], dim: int) -> tuple[ctypes.Array, list]:
    """The layers as the native call reads them (rotations left out, set per batch), and the arrays the structures
    point into, to keep alive as long as they are used."""
    held: list = []

    def address(a: np.ndarray | None) -> int | None:
        if a is not None:
            held.append(a)
        return _address(a)

    def projection(p: Projection) -> _Projection:
        (n, k), w = p.weight.shape, p.weight
        held.append(w)  # what `_stack_key` names by identity, alive while the structures are cached
        bias = address(_vector(p.bias, n, "bias"))
        if isinstance(w, Int8Weight):
            return _Projection(packed=address(w.packed), scales=address(w.scales), sums=address(w.sums), bias=bias,
                               n=n, k=k)
        if isinstance(w, F16Weight):
            return _Projection(f16_packed=address(w.packed), scales=address(w.scales), bias=bias, n=n, k=k)
        if isinstance(w, BF16Weight):
            return _Projection(bf16_packed=address(w.packed), bias=bias, n=n, k=k)
        return _Projection(weight=address(_buffer(w, (n, k), mx.float32, "weight")),
                           f32_packed=address(p.small_batches), bias=bias, n=n, k=k)

    def norm(p: Norm | None) -> _Norm:
        if p is None:
            return _Norm(None, None, 0.0, 0, 0)
        return _Norm(address(_vector(p.weight, dim, "norm weight")), address(_vector(p.bias, dim, "norm bias")), p.eps,
                     1, int(p.rms))

    structures = (_Layer * len(layers))(*(
        _Layer(projection(l.qkv), projection(l.attention_out), norm(l.norm1), projection(l.up), projection(l.down),
               _Projection() if l.gate is None else projection(l.gate), norm(l.norm2), FEED_FORWARDS[l.feed_forward],
               int(l.pre_norm), None, l.window) for l in layers))
    return structures, held


def max_head_dim() -> int:
    """The largest attention head size the kernel handles (128)."""
    return _kernels().max_head_dim


def self_attention(qkv: mx.array, n_heads: int, scale: float, mask: mx.array | None,
                   bias: mx.array | None = None, starts: np.ndarray | None = None,
                   rotary: Rotary | None = None, window: int = 0, keys: np.ndarray | None = None) -> mx.array:
    """`fastmath.self_attention` with a (B, 1, 1, L) boolean or no mask, an optional (H, L, L) scores bias and
    optional rotations of queries and keys by position, for head sizes up to `max_head_dim()`. With `starts` (B + 1
    row numbers), `qkv` is packed instead: (T, 3 * H * D), sequence b in rows starts[b] to starts[b + 1], no padding
    and no mask; the output is packed the same way, and `keys` (B int32) may make only each sequence's first rows
    keys (`PackedTokens.keys`)."""
    if starts is None:
        B, L, width = qkv.shape
    else:
        (rows, width), B = qkv.shape, len(starts) - 1
        L = _longest(starts, rows, "attention")
    if width % (3 * n_heads):
        raise ModelError(f"native attention: width {width} is not 3 x {n_heads} heads")
    head_dim = width // (3 * n_heads)
    data = _buffer(qkv, tuple(qkv.shape), mx.float32, "qkv")
    keep = None if mask is None else _buffer(mask.reshape(B, L), (B, L), mx.bool_, "mask")  # one byte a token
    added = None if bias is None else _buffer(bias, (n_heads, L, L), mx.float32, "bias")
    turns = None if rotary is None else ctypes.byref(rotary.structure(L, head_dim))
    y = mx.zeros((*qkv.shape[:-1], width // 3), mx.float32)  # written below, in MLX's memory: no copy after
    _check(_kernels().attention(data.ctypes.data, _address(keep), _address(starts), _address(_keys(keys, B)),
                                _address(added), turns, window, _writable(y).ctypes.data, B, L, n_heads, head_dim,
                                scale), "attention")
    return y


def linear_gelu(x: mx.array, weight: mx.array | PackedWeight, bias: mx.array | None) -> mx.array:
    """gelu(x @ weight.T + bias), the erf GELU, written over the matmul output made here."""
    y, data = _matmul(x, weight)
    dim = data.shape[-1]
    _check(_kernels().bias_gelu(data.ctypes.data, _address(_vector(bias, dim, "bias")), data.size // dim, dim),
           "bias_gelu")
    return y


def linear_glu(x: mx.array, weight: mx.array | PackedWeight, bias: mx.array | None, feed_forward: str) -> mx.array:
    """value * act(gate) (or act(value) * gate) from y = x @ weight.T + bias, whose halves are value and gate
    (`FEED_FORWARDS`' gated names), written over the matmul output made here: (..., 2 * hidden) in, (..., hidden)
    out."""
    y, data = _matmul(x, weight)
    width = data.shape[-1]
    if width % 2 or feed_forward not in HALVES_GATED:
        raise ModelError(f"native kernels: a {feed_forward} feed-forward of width {width} is not gated")
    rows, hidden = data.size // width, width // 2
    _check(_kernels().bias_glu(data.ctypes.data, _address(_vector(bias, width, "bias")), rows, hidden,
                               FEED_FORWARDS[feed_forward]), "bias_glu")
    return y.reshape(-1)[: rows * hidden].reshape(*y.shape[:-1], hidden)


def linear_add_layer_norm(x: mx.array, weight: mx.array | PackedWeight, bias: mx.array | None, residual: mx.array,
                          norm_weight: mx.array | None, norm_bias: mx.array | None, eps: float) -> mx.array:
    """layer_norm(x @ weight.T + bias + residual) * norm_weight + norm_bias, written over the matmul output made
    here."""
    y, data = _matmul(x, weight)
    dim = data.shape[-1]
    res = _buffer(residual, data.shape, mx.float32, "residual")
    _check(_kernels().add_layer_norm(data.ctypes.data, _address(_vector(bias, dim, "bias")), res.ctypes.data,
                                     _address(_vector(norm_weight, dim, "norm weight")),
                                     _address(_vector(norm_bias, dim, "norm bias")), data.size // dim, dim, eps, 0),
           "add_layer_norm")
    return y


def _matmul(x: mx.array, weight: mx.array | PackedWeight) -> tuple[mx.array, np.ndarray]:
    """x @ weight.T, evaluated, and a writable view of its memory: a new array no one else holds."""
    if isinstance(weight, PackedWeight):
        return packed_matmul(x, weight)
    if x.dtype != mx.float32 or weight.dtype != mx.float32 or weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ModelError(f"native kernels: x {_described(x.dtype, x.shape)} and weight "
                         f"{_described(weight.dtype, weight.shape)} are not float32 operands of one matmul")
    y = x @ weight.T
    return y, _writable(y)


def _writable(y: mx.array) -> np.ndarray:
    """`y`, a new array no one else holds, evaluated, as a writable NumPy view of its memory."""
    mx.eval(y)
    data = np.asarray(y)
    if not (data.flags.c_contiguous and data.flags.writeable):
        raise ModelError("native kernels: MLX's output is not a writable C-order buffer")
    return data


def _buffer(a: mx.array, shape: tuple[int, ...], dtype: mx.Dtype, name: str) -> np.ndarray:
    """`a`'s memory in C order (a copy only if MLX holds it strided), once its dtype and shape are the kernel's."""
    if a.dtype != dtype or tuple(a.shape) != tuple(shape):
        raise ModelError(f"native kernels: {name} is {_described(a.dtype, a.shape)}, not {_described(dtype, shape)}")
    mx.eval(a)
    return np.ascontiguousarray(a)


def _longest(starts: np.ndarray, rows: int, kernel: str) -> int:
    """The longest sequence `starts` cuts `rows` packed rows into, once it is checked to cut them."""
    lengths = np.diff(starts)
    if starts.dtype != np.int32 or starts[0] != 0 or starts[-1] != rows or (lengths < 0).any():
        raise ModelError(f"native {kernel}: starts do not cut {rows} packed rows into sequences")
    return int(lengths.max(initial=0))


def _keys(keys: np.ndarray | None, sequences: int) -> np.ndarray | None:
    """Each packed sequence's count of keys, once checked to be one int32 for each sequence (the kernels read one
    per sequence, and clamp it into [1, its rows])."""
    if keys is not None and (keys.dtype != np.int32 or keys.shape != (sequences,) or not keys.flags.c_contiguous):
        raise ModelError(f"native attention: keys are {keys.dtype}{keys.shape}, not one int32 for each of "
                         f"{sequences} sequences")
    return keys


def _vector(a: mx.array | None, dim: int, name: str) -> np.ndarray | None:
    return None if a is None else _buffer(a, (dim,), mx.float32, name)


def _described(dtype: mx.Dtype, shape) -> str:
    return f"{str(dtype).rpartition('.')[2]}{tuple(shape)}"


def _check(status: int, kernel: str) -> None:
    if status:
        raise ModelError(f"the native {kernel} kernel {_STATUS.get(status, f'returned {status}')}")


def _address(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data
