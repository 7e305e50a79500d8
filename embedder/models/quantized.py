"""Quantized layers on the CPU: MLX-quantized checkpoints dequantize, then one BLAS matmul; `dtype="int8"` runs a
float32 model's encoder projections as int8 matmuls."""

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

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
    """Each leaf module that is `swapped` replaced by `make(module)`, after the weights are loaded."""
    leaves = tree_map(lambda m: make(m) if swapped(m) else m, model.leaf_modules(), is_leaf=nn.Module.is_module)
    model.update_modules(leaves)


def use_blas_for_quantized(model: nn.Module) -> None:
    """Swap every QuantizedLinear for its dequantizing runner; call after the weights are loaded."""
    _swap_layers(model, lambda m: isinstance(m, nn.QuantizedLinear), DequantizingLinear)


def use_int8_matmuls(model: nn.Module, architecture: str) -> None:
    """Swap the encoder layers' float32 projections (`fastmath.Linear`) for int8 ones; heads, poolers and
    classifiers stay float32. Refuses where it cannot run, rather than run float32 under an int8 label."""
    if not kernels.int8_available():
        raise ModelError("dtype int8 needs a Linux CPU with AVX512-VNNI and g++ (the native kernels); "
                         "use float32 here")
    if not any(_encoder_projection(m) for _, m in model.named_modules()):
        raise ModelError(f"dtype int8 is not available for {architecture!r} models; use float32")
    _swap_layers(model, _encoder_projection, fastmath.Int8Linear.from_linear)


def _encoder_projection(module: nn.Module) -> bool:
    """An encoder layer's projection (`fastmath.Linear`), not a head's plain `nn.Linear`."""
    return type(module) is fastmath.Linear
