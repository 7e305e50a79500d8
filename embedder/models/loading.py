"""Build a ready model from a directory: config -> architecture -> weights -> tokenizer -> post-processing."""

import dataclasses
import importlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..errors import InputError, ModelError
from ..hub import canonical_id, resolve_model_path
from ..images import ImageProcessor, read_image_processor
from ..options import EngineOptions
from ..tokenizer import TextTokenizer, load_tokenizer
from .quantized import PACKED_DTYPES, kernel_runs, use_blas_for_quantized, use_packed_matmuls
from .st_config import DenseSpec, PipelineSpec, SpladeSpec, encoder_folder, pooling_modes, read_pipeline_spec

# model_type -> (package, module). Encoders are ours: they own speed, padding and exactness. Decoders run
# mlx-lm's model code through one adapter; any other model_type mlx-lm implements takes the same path.
_CAUSAL_LM = ("embedder.models", "causal_lm")
ARCHITECTURES = {
    "bert": ("embedder.models", "bert"),
    "roberta": ("embedder.models", "bert"),
    "xlm-roberta": ("embedder.models", "bert"),
    "camembert": ("embedder.models", "bert"),
    "distilbert": ("embedder.models", "distilbert"),
    "mpnet": ("embedder.models", "mpnet"),
    "modernbert": ("embedder.models", "modernbert"),
    "nomic_bert": ("embedder.models", "nomic_bert"),
    "gte": ("embedder.models", "gte"),
    "new": ("embedder.models", "gte"),  # the published GTE v1.5 checkpoints' remote-code name
    "t5": ("embedder.models", "t5"),
    "mt5": ("embedder.models", "t5"),
    "gemma3_text": ("embedder.models", "gemma3_text"),
    "siglip": ("embedder.models", "siglip"),
    **{t: _CAUSAL_LM for t in ("llama", "mistral", "phi3", "gemma", "gemma2", "qwen2", "qwen3", "qwen3_moe", "glm4")},
}
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
INT8 = "int8"  # float32 weights and activations, the encoder's matmuls in int8 (CPU; models/quantized.py)
# float16 on a CPU with AVX512-FP16 and bfloat16 on one with AVX512-BF16 run the same way, every Linear's matmul in
# that type (elsewhere, MLX's own)
# Activations that overflow float16 (Gemma's embedding scale and residual stream, T5's feed-forward, which
# transformers keeps in float32): bfloat16 on GPU instead.
BFLOAT16_ONLY = ("gemma", "gemma2", "gemma3_text", "t5", "mt5")  # T5's feed-forward outputs overflow float16 too
# Names users type for pooling modes, as candle-vllm spells them.
POOLING_ALIASES = {"last": "lasttoken", "last_token": "lasttoken", "first": "cls"}

Forward = Callable[..., mx.array]  # (input_ids, attention_mask[, token_types]) -> hidden states, or a pair's logits
ACTIVATIONS = {"identity": lambda v: v, "tanh": mx.tanh, "relu": nn.relu, "gelu": nn.gelu, "sigmoid": mx.sigmoid}


@dataclass
class DenseLayer:
    weight: mx.array
    bias: mx.array | None
    activation: str

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return ACTIVATIONS[self.activation](y)


@dataclass
class LoadedModel:
    """Everything the engine needs to turn token ids into final vectors."""

    model_id: str
    path: Path
    architecture: str
    forward: Forward  # (input_ids, attention_mask) -> last hidden state (B, L, H); a cross-encoder's logits (B, labels)
    module: nn.Module
    dense: list[DenseLayer]
    spec: PipelineSpec
    tokenizer: TextTokenizer
    max_length: int
    dim: int
    dtype: str
    quantization: dict | None
    images: ImageProcessor | None = None  # an image model's preprocessing (its module has `embed_images`)
    image_patches: int = 0  # what one image costs a batch, in tokens: its vision tower's patch count


def load_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"{path} has no config.json; is it a model directory?") from e
    except ValueError as e:
        raise ModelError(f"{path / 'config.json'} is not valid JSON: {e}") from e


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def architectures_with(head: str) -> list[str]:
    """The architectures of embed's own encoders that have `head`: `Classifier` (sequence classifiers: rerankers)
    or `MaskedLM` (SPLADE's sparse encoders)."""
    return sorted(arch for arch in own_encoders() if hasattr(get_architecture({"model_type": arch}), head))


def own_encoders() -> list[str]:
    """The architectures with a model file of embed's own (the rest run on mlx-lm's code)."""
    return sorted(arch for arch, module in ARCHITECTURES.items() if module != _CAUSAL_LM)


def architecture_module(model_type: str) -> tuple[str, str] | None:
    """Our table first, then any causal LM that the installed mlx-lm implements."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    from .causal_lm import lm_module_name

    return _CAUSAL_LM if lm_module_name(model_type) else None


def get_architecture(config: dict):
    """The module defining ModelArgs and Model for this config's model_type."""
    model_type = config.get("model_type")
    if model_type is None:
        raise ModelError("config.json has no model_type")
    if (found := architecture_module(model_type)) is None:
        raise ModelError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_architectures())}, "
            f"and other causal LMs that mlx-lm implements"
        )
    package, name = found
    return importlib.import_module(f"{package}.{name}")


def hidden_size(config: dict) -> int:
    """The width of the states the model returns, whatever its config calls it."""
    for key in ("hidden_size", "d_model", "n_embd", "dim"):  # T5: d_model; NomicBERT: n_embd; DistilBERT: dim
        if key in config:
            return config[key]
    text = config.get("text_config") or {}  # SigLIP: its text tower's projection
    return text.get("projection_size") or text.get("hidden_size", 768)


def position_limit(config: dict) -> int | None:
    """The longest input the position table allows (RoBERTa's table includes a padding offset)."""
    # n_positions: NomicBERT's GPT-2 name; a two-tower model (SigLIP) limits texts by its text tower's table
    text_tower = config.get("text_config") or {}
    limit = (config.get("max_position_embeddings") or config.get("n_positions")
             or text_tower.get("max_position_embeddings"))
    if limit is not None and config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "mpnet"):
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


def build_model(config: dict, path: Path, dtype: mx.Dtype | None, labels: int | None = None,
                masked_lm: bool = False) -> nn.Module:
    """mlx-lm's chain: ModelArgs.from_dict -> Model -> sanitize -> quantize what is quantized -> strict load.
    Float weights are cast to `dtype`, or with None kept as stored. With `labels`, the architecture's `Classifier`
    (a cross-encoder) instead of its `Model`; with `masked_lm`, its `MaskedLM` (a SPLADE encoder)."""
    arch = get_architecture(config)
    args = arch.ModelArgs.from_dict(config)
    if masked_lm:
        if not hasattr(arch, "MaskedLM"):
            raise ModelError(f"SPLADE pooling needs a masked-LM head, which embed runs for "
                             f"{', '.join(architectures_with('MaskedLM'))}, not {config['model_type']!r}")
        model = arch.MaskedLM(args)
    elif labels is None:
        model = arch.Model(args)
    elif hasattr(arch, "Classifier"):
        model = arch.Classifier(args, labels)
    else:
        raise ModelError(f"cross-encoders (sequence classifiers) of architecture {config['model_type']!r} are not "
                         f"supported; supported: {', '.join(architectures_with('Classifier'))}")
    weights = load_weights(path)
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    if (q := config.get("quantization")) is not None:
        nn.quantize(
            model,
            group_size=q["group_size"],
            bits=q["bits"],
            mode=q.get("mode", "affine"),
            class_predicate=lambda p, m: quantized_layer(q, p, m, weights),
        )
    if dtype is not None:
        weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ModelError(f"weights do not match the {config['model_type']} architecture: {e}") from e
    model.eval()
    mx.eval(held_arrays(model))
    return model


def held_arrays(model: nn.Module) -> list[mx.array]:
    """Every array the model's modules hold, private ones too (mlx-lm's RoPE builds `_freqs` lazily at init).

    A lazy array belongs to the stream of the thread that made it, and the engine's lanes are other threads:
    left unevaluated, it fails there ("There is no Stream(cpu, 0) in current thread").
    """
    return [leaf for m in model.modules() for _, leaf in tree_flatten(dict(m.items())) if isinstance(leaf, mx.array)]


def quantized_layer(quantization: dict, path: str, module: nn.Module, weights: dict) -> bool | dict:
    """mlx-lm's convention: a layer is quantized when its `.scales` are in the checkpoint, with the
    config's bits and group size unless the config gives that layer its own (mixed-precision files)."""
    if not hasattr(module, "to_quantized") or f"{path}.scales" not in weights:
        return False
    own = quantization.get(path)
    return own if isinstance(own, dict) else True


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
    mx.eval(weight, bias)  # lazy, they would be tied to this thread's stream (see held_arrays)
    return DenseLayer(weight, bias, spec.activation)


def default_dtype(config: dict) -> str:
    if mx.default_device() == mx.cpu:
        return "float32"
    return "bfloat16" if config.get("model_type") in BFLOAT16_ONLY else "float16"


def with_pooling(spec: PipelineSpec, pooling: str) -> PipelineSpec:
    """`--pooling`: sentence-transformers' mode names, or candle-vllm's `last`, `+` joining several; or `splade`
    (TEI's), a masked-LM checkpoint's SPLADE weights, max-pooled."""
    if pooling == "splade":
        return dataclasses.replace(spec, pooling=("splade",), splade=SpladeSpec())
    modes = [POOLING_ALIASES.get(m, m) for m in pooling.split("+")]
    return dataclasses.replace(spec, pooling=pooling_modes({"pooling_mode": modes}), splade=None)


def load_model(options: EngineOptions, budget_given: bool = False) -> LoadedModel:
    """The model `options` name, built as they say; `batch_tokens` is the engine's resolved budget, which the user
    gave when `budget_given`."""
    model, max_length, batch_tokens, pooling = options.model, options.max_length, options.batch_tokens, options.pooling
    path = resolve_model_path(model)
    if path.suffix == ".gguf":
        from .gguf import cached_checkpoint

        path = cached_checkpoint(path)
    encoder = encoder_folder(path)  # a Router's encoder has a folder of its own
    config = load_config(encoder)
    # A bare causal LM has no Pooling module: mean over its tokens, as candle-vllm does.
    spec = read_pipeline_spec(path, default_pooling="mean", config=config)
    if pooling is not None and spec.scores is None:
        spec = with_pooling(spec, pooling)
    if options.max_active_dims is not None:
        if spec.splade is None:
            raise InputError(f"max_active_dims is for sparse (SPLADE) models; {model} gives dense vectors",
                             "max_active_dims")
        kept = dataclasses.replace(spec.splade, max_active_dims=options.max_active_dims)
        spec = dataclasses.replace(spec, splade=kept)
    dtype = options.dtype or default_dtype(config)
    on_cpu = mx.default_device() == mx.cpu
    packed = on_cpu and (dtype == INT8 or (not config.get("quantization") and kernel_runs(dtype)))
    if dtype not in DTYPES and dtype != INT8:
        raise ModelError(f"unsupported dtype {dtype!r}; use one of {', '.join((*DTYPES, INT8))}")
    if dtype == INT8 and not on_cpu:
        raise ModelError("dtype int8 runs on the CPU only; on a GPU use float16 or bfloat16")
    if dtype == INT8 and config.get("quantization"):
        raise ModelError("dtype int8 quantizes a float checkpoint; this one is already quantized")
    if dtype in ("float16", "bfloat16") and on_cpu and not packed:
        if config.get("quantization"):  # no packed dtype takes one: float32 dequantizes it into the BLAS
            why, advice = "a quantized checkpoint", "float32 is the fastest dtype for it"
        else:
            why = f"no {PACKED_DTYPES[dtype][2]} {dtype} kernel here"
            fast = [d for d in PACKED_DTYPES if kernel_runs(d)]
            advice = f"for speed here use {' or '.join(fast)}" if fast else "float32 is the fastest dtype on this CPU"
        warnings.warn(f"dtype {dtype} on the CPU runs MLX's generic kernels ({why}), ~30x slower than float32 (which "
                      f"is exact); {advice}", RuntimeWarning, stacklevel=2)
    # Packed: the weights as stored (a bfloat16 decoder's are half its float32 size), each Linear's packed for our
    # kernel in turn, then the rest (embeddings, norms, biases) cast to float32, the activations' type.
    module = build_model(config, encoder, None if packed else DTYPES[dtype],
                         spec.scores.labels if spec.scores else None, masked_lm=spec.splade is not None)
    if packed:
        use_packed_matmuls(module, config["model_type"], dtype)
        module.set_dtype(mx.float32)
        mx.eval(held_arrays(module))
    elif config.get("quantization") and on_cpu:
        use_blas_for_quantized(module)

    limit = position_limit(config)
    # One input must always fit one batch (as TEI checks at start), so the token budget caps the default.
    natural = [n for n in (spec.max_seq_length, limit) if n]
    if max_length is None and budget_given and natural and batch_tokens < min(natural):
        # A speed setting must not change vectors: the default budget caps a very long model's length, a given one
        # is refused rather than cut every input at it.
        raise InputError(f"batch_tokens {batch_tokens} is under the model's maximum input length of {min(natural)}, "
                         f"so long inputs would not fit a batch; raise batch_tokens, or pass max_length {batch_tokens}"
                         " to cut inputs there", "batch_tokens")
    known = natural + ([batch_tokens] if batch_tokens else [])
    length = max_length or (min(known) if known else None)
    if length is None:
        raise ModelError("cannot tell the model's maximum input length; pass max_length")
    if limit is not None and length > limit:
        raise ModelError(f"max_length {length} is more than the model's position limit of {limit}")
    if batch_tokens is not None and length > batch_tokens:
        raise ModelError(f"max_length {length} is more than the batch token budget {batch_tokens}; raise batch_tokens")
    tokenizer = load_tokenizer(encoder, length, spec.do_lower_case, options.long_input_mode,
                               spec.multi_vector.prefix_tokens if spec.multi_vector else ())
    dense = [load_dense(d) for d in spec.dense]
    images = read_image_processor(encoder, module.args.image_size) if hasattr(module, "embed_images") else None
    if images is not None and not spec.has_st_files:  # text and image vectors compared by cosine, as SigLIP's own
        spec = dataclasses.replace(spec, normalize=True)
    # DistilBERT: dim; T5: d_model; NomicBERT: n_embd
    hidden = hidden_size(config)
    dim = dense[-1].weight.shape[0] if dense else hidden * max(len(spec.pooling), 1)
    if spec.scores is not None:  # a cross-encoder's output is its labels' scores
        dim = spec.scores.labels
    if spec.splade is not None:  # a sparse encoder's, one weight per vocabulary entry
        dim = module.args.vocab_size
    if spec.multi_vector is not None and spec.multi_vector.truncate_dim:  # a multi-vector model's saved width
        dim = min(dim, spec.multi_vector.truncate_dim)
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
        images=images,
        image_patches=module.args.patches if images is not None else 0,
    )
