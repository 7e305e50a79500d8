"""Build a ready model from a directory: config -> architecture -> weights -> tokenizer -> post-processing."""

import dataclasses
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .errors import ModelError
from .hub import canonical_id, resolve_model_path
from .st_config import DenseSpec, PipelineSpec, pooling_modes, read_pipeline_spec
from .tokenizer import TextTokenizer, load_tokenizer

# model_type -> (package, module). Ours first: they own speed and exactness; then mlx-embeddings.
ARCHITECTURES = {
    "bert": ("embedder.models", "bert"),
    "roberta": ("embedder.models", "bert"),
    "xlm-roberta": ("embedder.models", "bert"),
    "camembert": ("embedder.models", "bert"),
}
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

Forward = Callable[[mx.array, mx.array], mx.array]


@dataclass
class DenseLayer:
    weight: mx.array
    bias: mx.array | None
    activation: str

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return {"identity": lambda v: v, "tanh": mx.tanh, "relu": nn.relu, "gelu": nn.gelu, "sigmoid": mx.sigmoid}[
            self.activation
        ](y)


@dataclass
class LoadedModel:
    """Everything the engine needs to turn token ids into final vectors."""

    model_id: str
    path: Path
    architecture: str
    forward: Forward  # (input_ids, attention_mask) -> last hidden state (B, L, H)
    module: nn.Module
    dense: list[DenseLayer]
    spec: PipelineSpec
    tokenizer: TextTokenizer
    max_length: int
    dim: int
    dtype: str
    quantization: dict | None


def load_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"{path} has no config.json; is it a model directory?") from e
    except ValueError as e:
        raise ModelError(f"{path / 'config.json'} is not valid JSON: {e}") from e


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def get_architecture(config: dict):
    """The module defining ModelArgs and Model for this config's model_type."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ModelError("config.json has no model_type")
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_architectures())}"
        )
    package, name = ARCHITECTURES[model_type]
    return importlib.import_module(f"{package}.{name}")


def position_limit(config: dict) -> int | None:
    """The longest input the position table allows (RoBERTa's table includes a padding offset)."""
    limit = config.get("max_position_embeddings")
    if limit is not None and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limit -= config.get("pad_token_id", 1) + 1
    return limit


def load_weights(path: Path) -> dict[str, mx.array]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no .safetensors weights in {path}")
    weights = {}
    for f in files:
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:  # mlx raises plain RuntimeError/ValueError for unreadable files
            raise ModelError(f"corrupt weights file {f}: {e}") from e
    return weights


def build_model(config: dict, path: Path, dtype: mx.Dtype) -> nn.Module:
    """mlx-lm's chain: ModelArgs.from_dict -> Model -> sanitize -> quantize what is quantized -> strict load."""
    arch = get_architecture(config)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    weights = load_weights(path)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    if (q := config.get("quantization")) is not None:
        nn.quantize(
            model,
            group_size=q["group_size"],
            bits=q["bits"],
            mode=q.get("mode", "affine"),
            class_predicate=lambda p, m: hasattr(m, "to_quantized") and f"{p}.scales" in weights,
        )
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelError(f"weights do not match the {config['model_type']} architecture: {e}") from e
    model.eval()
    mx.eval(model.parameters())
    return model


def load_dense(spec: DenseSpec) -> DenseLayer:
    w = mx.load(str(spec.path / "model.safetensors"))
    try:
        weight = w["linear.weight"].astype(mx.float32)
    except KeyError as e:
        raise ModelError(f"{spec.path}/model.safetensors has no linear.weight") from e
    if weight.shape != (spec.out_features, spec.in_features):
        raise ModelError(f"Dense layer {spec.path} has weight shape {weight.shape}, config says "
                         f"({spec.out_features}, {spec.in_features})")
    bias = w["linear.bias"].astype(mx.float32) if spec.bias else None
    return DenseLayer(weight, bias, spec.activation)


def default_dtype() -> str:
    return "float32" if mx.default_device() == mx.cpu else "float16"


def load_model(
    model: str,
    *,
    max_length: int | None = None,
    dtype: str | None = None,
    pooling: str | None = None,
    truncate: bool = True,
) -> LoadedModel:
    path = resolve_model_path(model)
    config = load_config(path)
    spec = read_pipeline_spec(path)
    if pooling is not None:
        spec = dataclasses.replace(spec, pooling=pooling_modes({"pooling_mode": pooling}))
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise ModelError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    module = build_model(config, path, DTYPES[dtype])

    limit = position_limit(config)
    known = [n for n in (spec.max_seq_length, limit) if n]
    length = max_length or (min(known) if known else None)
    if length is None:
        raise ModelError("cannot tell the model's maximum input length; pass max_length")
    if limit is not None and length > limit:
        raise ModelError(f"max_length {length} is more than the model's position limit of {limit}")
    tokenizer = load_tokenizer(path, length, spec.do_lower_case, truncate)
    dense = [load_dense(d) for d in spec.dense]
    dim = dense[-1].weight.shape[0] if dense else config["hidden_size"] * len(spec.pooling)
    return LoadedModel(
        model_id=canonical_id(model),
        path=path,
        architecture=config["model_type"],
        forward=module,
        module=module,
        dense=dense,
        spec=spec,
        tokenizer=tokenizer,
        max_length=length,
        dim=dim,
        dtype=dtype,
        quantization=config.get("quantization"),
    )
