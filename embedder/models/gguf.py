"""GGUF files (llama.cpp, Ollama) to MLX checkpoints: decoder LLMs and BERT encoders, tensors as MLX reads them
(Q4_0/Q4_1/Q8_0 stay quantized) or, for K-quants and other block types, dequantized once by the gguf package and
stored as MLX 8-bit; config and pooling from the file's metadata; tokenizer from beside the file or its metadata."""

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..errors import ModelError

# general.architecture -> transformers model_type (llama.cpp writes Mistral as llama).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "phi3": "phi3",
                 "glm4": "glm4", "bert": "bert", "nomic-bert": "nomic_bert"}
# Metadata key (after "<arch>.") -> config.json key.
CONFIG_KEYS = {
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.layer_norm_epsilon": "layer_norm_eps",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
    "context_length": "max_position_embeddings",
    "expert_count": "num_experts",
    "expert_used_count": "num_experts_per_tok",
    "expert_feed_forward_length": "moe_intermediate_size",
}
# GGUF tensor name (without blk.N.) -> transformers name (without model.layers.N.).
TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.switch_mlp.gate_proj",
    "ffn_up_exps": "mlp.switch_mlp.up_proj",
    "ffn_down_exps": "mlp.switch_mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Where an architecture's transformers names differ (GLM4: fused gate/up, norms after attention and after the MLP).
ARCHITECTURE_TENSOR_NAMES = {
    "glm4": {**TENSOR_NAMES, "ffn_up": "mlp.gate_up_proj", "post_attention_norm": "post_self_attn_layernorm",
             "post_ffw_norm": "post_mlp_layernorm"},
}
# The same for llama.cpp's encoders (convert_hf_to_gguf's BertModel and NomicBertModel): model_type -> (the
# transformers prefix of layer N, GGUF layer tensor -> transformers name, GGUF global tensor -> transformers name).
ENCODER_NAMES = {
    "bert": ("encoder.layer", {
        "attn_q": "attention.self.query",
        "attn_k": "attention.self.key",
        "attn_v": "attention.self.value",
        "attn_output": "attention.output.dense",
        "attn_output_norm": "attention.output.LayerNorm",
        "ffn_up": "intermediate.dense",
        "ffn_down": "output.dense",
        "layer_output_norm": "output.LayerNorm",
    }, {
        "token_embd": "embeddings.word_embeddings",
        "token_types": "embeddings.token_type_embeddings",
        "position_embd": "embeddings.position_embeddings",
        "token_embd_norm": "embeddings.LayerNorm",
    }),
    # Nomic's published (remote-code) names, which `nomic_bert.Model` reads.
    "nomic_bert": ("encoder.layers", {
        "attn_qkv": "attn.Wqkv",
        "attn_output": "attn.out_proj",
        "attn_output_norm": "norm1",
        "ffn_up": "mlp.fc11",
        "ffn_gate": "mlp.fc12",
        "ffn_down": "mlp.fc2",
        "layer_output_norm": "norm2",
    }, {
        "token_embd": "embeddings.word_embeddings",
        "token_types": "embeddings.token_type_embeddings",
        "token_embd_norm": "emb_ln",
    }),
}
ENCODERS = tuple(ENCODER_NAMES)
# `<arch>.pooling_type` (llama.cpp's enum) -> sentence-transformers' pooling mode.
POOLING_TYPES = {1: "mean", 2: "cls", 3: "lasttoken"}
GROUP_SIZE = 32  # every GGUF block format MLX reads (Q4_0, Q4_1, Q8_0) quantizes 32 weights per block
MLX_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0")  # what MLX's own GGUF reader converts exactly
FLOAT_TYPES = ("F32", "F16", "BF16")
REQUANTIZED_BITS = 8  # other block types, dequantized: MLX affine 8-bit, far finer than any K-quant's own error


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict]:
    """Tensors and metadata. MLX reads the formats it converts exactly; for any other block type (K-quants, Q5_0,
    IQ4_NL...) every tensor is read by the gguf package instead, and quantized ones are dequantized with its
    dequantizers and stored as MLX 8-bit (MLX's own reader would turn some K-quants into wrong floats)."""
    try:
        import gguf
    except ImportError as e:
        raise ModelError(f"reading {path.name} needs the gguf package: pip install 'embed[gguf]'") from e
    try:
        reader = gguf.GGUFReader(str(path))
        if all(t.tensor_type.name in MLX_TYPES for t in reader.tensors):
            return mx.load(str(path), return_metadata=True)
        metadata = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
        return {k: v for t in reader.tensors for k, v in _tensor(t, gguf).items()}, metadata
    except (ValueError, OSError, RuntimeError, NotImplementedError) as e:  # broken files, unknown block types
        raise ModelError(f"cannot read {path}: {e}") from e


def _tensor(tensor, gguf) -> dict[str, mx.array]:
    """One tensor the gguf package read: floats as they are, a quantized one dequantized, then MLX 8-bit."""
    name = tensor.name
    if tensor.tensor_type.name in ("F32", "F16"):
        return {name: mx.array(np.asarray(tensor.data))}
    values = mx.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    if tensor.tensor_type.name in FLOAT_TYPES or values.ndim != 2:
        return {name: values}
    weight, scales, biases = mx.quantize(values, group_size=GROUP_SIZE, bits=REQUANTIZED_BITS)
    stem = name.removesuffix(".weight")
    return {name: weight, f"{stem}.scales": scales, f"{stem}.biases": biases}


def _scalar(value):
    return value.item() if isinstance(value, mx.array) else value


def gguf_config(metadata: dict, weights: dict[str, mx.array]) -> dict:
    """config.json for the file's architecture, from the `<arch>.*` metadata keys."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    config = {"model_type": ARCHITECTURES[arch]}
    for key, name in CONFIG_KEYS.items():
        if f"{arch}.{key}" in metadata:
            config[name] = _scalar(metadata[f"{arch}.{key}"])
    config["vocab_size"] = weights["token_embd.weight"].shape[0]
    if config["model_type"] in ENCODERS:
        config["type_vocab_size"] = weights["token_types.weight"].shape[0] if "token_types.weight" in weights else 0
        if arch == "nomic-bert":  # the published config's names, which nomic_bert.ModelArgs reads
            config = nomic_bert_config(config, metadata, weights)
        return config
    config["tie_word_embeddings"] = "output.weight" not in weights
    if arch == "phi3":  # fused gate_up: half of the up projection's rows
        config["intermediate_size"] = config.get("intermediate_size") or weights["blk.0.ffn_up.weight"].shape[0] // 2
    if arch == "glm4":  # rotary on part of each head; q/k/v with biases
        head_dim = config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
        config["partial_rotary_factor"] = _scalar(metadata.get("glm4.rope.dimension_count", head_dim)) / head_dim
        config["attention_bias"] = "blk.0.attn_q.bias" in weights
    return config


def nomic_bert_config(config: dict, metadata: dict, weights: dict[str, mx.array]) -> dict:
    """NomicBERT's GPT-2 style names; biases where the file has them; SwiGLU, rotary on every head dimension."""
    return {
        "model_type": "nomic_bert", "vocab_size": config["vocab_size"], "type_vocab_size": config["type_vocab_size"],
        "n_embd": config["hidden_size"], "n_head": config["num_attention_heads"],
        "n_layer": config["num_hidden_layers"], "n_inner": config["intermediate_size"],
        "n_positions": config.get("max_position_embeddings"),
        "layer_norm_epsilon": config.get("layer_norm_eps", 1e-12),
        "rotary_emb_base": _scalar(metadata.get("nomic-bert.rope.freq_base", 1000.0)),
        "activation_function": "swiglu",
        "qkv_proj_bias": "blk.0.attn_qkv.bias" in weights,
        "mlp_fc1_bias": "blk.0.ffn_up.bias" in weights,
        "mlp_fc2_bias": "blk.0.ffn_down.bias" in weights,
    }


def _unpermute(w: mx.array, n_heads: int) -> mx.array:
    """llama.cpp interleaves the rotary halves of llama's q/k rows; put them back (rows only, so the
    packed weights, scales and biases of a quantized tensor all take the same permutation)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(weights: dict[str, mx.array], config: dict) -> dict[str, mx.array]:
    """GGUF tensor names to transformers ones; `.scales`/`.biases` follow their weight."""
    encoder = config["model_type"] in ENCODERS
    layers, names, globals_ = ENCODER_NAMES[config["model_type"]] if encoder else (
        "model.layers", ARCHITECTURE_TENSOR_NAMES.get(config["model_type"], TENSOR_NAMES), GLOBAL_NAMES)
    out = {}
    for key, value in weights.items():
        stem, part = key.rsplit(".", 1)
        if m := re.fullmatch(r"blk\.(\d+)\.(\w+)", stem):
            if m.group(2) not in names:
                raise ModelError(f"unknown GGUF tensor {key}")
            name = f"{layers}.{m.group(1)}.{names[m.group(2)]}"
            if config["model_type"] == "llama" and m.group(2) in ("attn_q", "attn_k"):
                heads = config["num_attention_heads" if m.group(2) == "attn_q" else "num_key_value_heads"]
                value = _unpermute(value, heads)
        elif stem in globals_:
            name = globals_[stem]
        else:
            raise ModelError(f"unknown GGUF tensor {key}")
        out[f"{name}.{part}"] = value
    return out


def quantization_config(weights: dict[str, mx.array]) -> dict | None:
    """mlx-lm's quantization entry; layers whose bits differ from the most common get their own."""
    bits = {
        k.removesuffix(".scales"): 32 * weights[k.replace(".scales", ".weight")].shape[-1] // (v.shape[-1] * GROUP_SIZE)
        for k, v in weights.items()
        if k.endswith(".scales")
    }
    if not bits:
        return None
    common = Counter(bits.values()).most_common(1)[0][0]
    config = {"group_size": GROUP_SIZE, "bits": common}
    config.update({p: {"group_size": GROUP_SIZE, "bits": b} for p, b in bits.items() if b != common})
    return config


def save_tokenizer(src: Path, out: Path, metadata: dict) -> None:
    """A tokenizer.json beside the file wins; else one built from the GGUF vocabulary (BERT's WordPiece here,
    transformers for the rest)."""
    beside = src.parent / "tokenizer.json"
    if beside.exists():
        for f in src.parent.glob("*.json"):
            if f.name.startswith(("tokenizer", "special_tokens")):
                (out / f.name).write_bytes(f.read_bytes())
        return
    if metadata.get("tokenizer.ggml.model") == "bert":
        wordpiece_tokenizer(metadata).save(str(out / "tokenizer.json"))
        return
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name).save_pretrained(str(out))
    except ImportError as e:
        raise ModelError(f"{src} has no tokenizer.json beside it; rebuilding one from the GGUF metadata "
                         f"needs transformers, torch and gguf (pip install 'embed[oracle,gguf]')") from e


def wordpiece_tokenizer(metadata: dict):
    """BERT's tokenizer from a llama.cpp vocabulary. llama.cpp stores WordPiece tokens in "phantom space" form (a
    word's first piece gets a leading U+2581, a continuation loses its "##"); this undoes that, and lower-cases and
    strips accents as llama.cpp's WPM tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    def piece(token: str) -> str:
        if token.startswith("\u2581"):
            return token[1:]
        return token if token.startswith("[") and token.endswith("]") else "##" + token

    tokens = [piece(t) for t in metadata["tokenizer.ggml.tokens"]]

    def special(keys: tuple[str, ...], default: str) -> str:
        """The first of these metadata ids present (llama.cpp's newer key first), else the usual BERT token."""
        found = next((metadata[f"tokenizer.ggml.{k}"] for k in keys if f"tokenizer.ggml.{k}" in metadata), None)
        return default if found is None else tokens[_scalar(found)]

    unk = special(("unknown_token_id",), "[UNK]")
    cls = special(("cls_token_id", "bos_token_id"), "[CLS]")
    sep = special(("seperator_token_id", "eos_token_id"), "[SEP]")  # sic: llama.cpp's spelling
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=unk))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokens.index(cls)), (sep, tokens.index(sep))])
    return tokenizer


def save_pipeline(metadata: dict, dim: int, out: Path) -> None:
    """An encoder's pooling (`<arch>.pooling_type`) and normalization as sentence-transformers files, so the normal
    load chain reads them; llama.cpp and Ollama L2-normalize the embeddings they return, and so does this."""
    arch = metadata["general.architecture"]
    pooling = POOLING_TYPES.get(_scalar(metadata.get(f"{arch}.pooling_type", 1)))
    if pooling is None:
        raise ModelError(f"unsupported GGUF pooling type {metadata.get(f'{arch}.pooling_type')} (mean, cls, last)")
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode": pooling}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))


def gguf_to_checkpoint(src: Path, out: Path) -> Path:
    """Write an MLX checkpoint (config.json, model.safetensors, tokenizer) that the normal load chain reads."""
    weights, metadata = read_gguf(src)
    config = gguf_config(metadata, weights)
    weights = {k: v for k, v in hf_weights(weights, config).items() if not k.startswith("lm_head.")}
    if (q := quantization_config(weights)) is not None:
        config["quantization"] = q
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(src, out, metadata)
    if config["model_type"] in ENCODERS:
        save_pipeline(metadata, weights["embeddings.word_embeddings.weight"].shape[-1], out)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def cached_checkpoint(src: Path) -> Path:
    """The converted checkpoint for this file, made once and kept under the cache (EMBED_CACHE)."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("EMBED_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "embed")
    out = root.expanduser() / "gguf" / f"{src.stem}-{key}"
    if not (out / "config.json").exists():  # config.json is written last: its presence means complete
        gguf_to_checkpoint(src, out)
    return out
