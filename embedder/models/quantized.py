"""Quantized layers on the CPU: MLX-quantized checkpoints dequantize, then one BLAS matmul; `dtype="int8"` runs a
float32 model's encoder projections in our int8 matmul kernel and, on CPUs with float16 or bfloat16 arithmetic,
`dtype="float16"` or `"bfloat16"` every Linear in our kernel for it."""

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ..errors import ModelError
from ..native import fastmath, kernels


class DequantizingLinear(nn.Module):
    """Runs a QuantizedLinear as dequantize + matmul: MLX's CPU quantized matmul is a scalar loop (~35x
    slower than BLAS on a BERT layer); the weights stay quantized in memory, one layer is expanded at a time."""

    def __init__(self, layer: nn.QuantizedLinear):
        super().__init__()
        self.layer = layer

    def __call__(self, x: mx.array) -> mx.array:
        q = self.layer
        w = mx.dequantize(q["weight"], q["scales"], q.get("biases"), group_size=q.group_size, bits=q.bits, mode=q.mode)
        y = x @ w.astype(x.dtype).T
        return y + q["bias"] if "bias" in q else y


def _swap_layers(model: nn.Module, swapped: Callable[[nn.Module], bool], make: Callable[[nn.Module], nn.Module]):
    """Each leaf module that is `swapped` replaced by `make(module)`, after the weights are loaded: one at a time,
    so that a layer's old weights can go before the next layer's replacement is made (a large model's would
    otherwise all be held twice)."""
    for name in [name for name, module in model.named_modules() if swapped(module)]:
        module = model
        for part in name.split("."):
            module = module[int(part)] if isinstance(module, list) else module[part]
        model.update_modules(tree_unflatten([(name, make(module))]))


def use_blas_for_quantized(model: nn.Module) -> None:
    """Swap every QuantizedLinear for its dequantizing runner; call after the weights are loaded."""
    _swap_layers(model, lambda m: isinstance(m, nn.QuantizedLinear), DequantizingLinear)


# dtype -> the `kernels` functions that say whether its kernel runs here and pack a weight for it, and the
# instructions it needs
PACKED_DTYPES = {"int8": ("int8_available", "pack_int8", "AVX512-VNNI"),
                 "float16": ("f16_available", "pack_f16", "AVX512-FP16"),
                 "bfloat16": ("bf16_available", "pack_bf16", "AVX512-BF16")}


def kernel_runs(dtype: str) -> bool:
    """Whether `dtype` has a packed kernel (`PACKED_DTYPES`) that runs on this CPU."""
    return dtype in PACKED_DTYPES and getattr(kernels, PACKED_DTYPES[dtype][0])()


def use_packed_matmuls(model: nn.Module, architecture: str, dtype: str) -> None:
    """Swap the model's float32 projections for ones that multiply in `dtype` (int8, float16 or bfloat16) on
    weights packed once: int8 the encoder layers' only, the 16-bit types every Linear (`_packable`). Refuses
    where it cannot run, rather than run float32 under another label."""
    _, packer, instructions = PACKED_DTYPES[dtype]
    pack = getattr(kernels, packer)
    if not kernel_runs(dtype):
        raise ModelError(f"dtype {dtype} needs a Linux CPU with {instructions} and g++ (the native kernels); "
                         "use float32 here")
    if not any(_packable(m, dtype) for _, m in model.named_modules()):
        raise ModelError(f"dtype {dtype} is not available for {architecture!r} models; use float32")
    _swap_layers(model, lambda m: _packable(m, dtype), lambda linear: fastmath.PackedLinear.from_linear(linear, pack))


def _packable(module: nn.Module, dtype: str) -> bool:
    """int8: an encoder layer's projection (`fastmath.Linear`), not a head's plain `nn.Linear`, whose error would go
    straight to the output; not a decoder's either, whose activations carry outlier channels hundreds of times their
    neighbours, which one int8 scale per token cannot hold. float16, scaled per token too, keeps 11 significant bits
    for every value at any such spread, and bfloat16 8 with float32's range: every Linear, heads and decoders
    included."""
    if dtype == "int8":
        return type(module) is fastmath.Linear
    return type(module) in (fastmath.Linear, nn.Linear)
