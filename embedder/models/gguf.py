"""GGUF files (llama.cpp) to MLX checkpoints: tensors as MLX reads them (Q4_0/Q4_1/Q8_0 stay quantized),
config from the file's metadata, tokenizer from beside the file or from its metadata."""

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import mlx.core as mx

from ..errors import ModelError

# general.architecture -> transformers model_type (llama.cpp writes Mistral as llama).
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "phi3": "phi3"}
# Metadata key (after "<arch>.") -> config.json key.
CONFIG_KEYS = {
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
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
GROUP_SIZE = 32  # every GGUF block format MLX reads (Q4_0, Q4_1, Q8_0) quantizes 32 weights per block


def read_gguf(path: Path) -> tuple[dict[str, mx.array], dict]:
    try:
        return mx.load(str(path), return_metadata=True)
    except Exception as e:  # MLX raises plain errors for unknown block types and broken files
        raise ModelError(f"cannot read {path}: {e} (MLX reads F32, F16, BF16, Q4_0, Q4_1 and Q8_0 tensors)") from e


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
    config["tie_word_embeddings"] = "output.weight" not in weights
    if arch == "phi3":  # fused gate_up: half of the up projection's rows
        config["intermediate_size"] = config.get("intermediate_size") or weights["blk.0.ffn_up.weight"].shape[0] // 2
    return config


def _unpermute(w: mx.array, n_heads: int) -> mx.array:
    """llama.cpp interleaves the rotary halves of llama's q/k rows; put them back (rows only, so the
    packed weights, scales and biases of a quantized tensor all take the same permutation)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(weights: dict[str, mx.array], config: dict) -> dict[str, mx.array]:
    """GGUF tensor names to transformers ones; `.scales`/`.biases` follow their weight."""
    out = {}
    for key, value in weights.items():
        stem, part = key.rsplit(".", 1)
        if m := re.fullmatch(r"blk\.(\d+)\.(\w+)", stem):
            if m.group(2) not in TENSOR_NAMES:
                raise ModelError(f"unknown GGUF tensor {key}")
            name = f"model.layers.{m.group(1)}.{TENSOR_NAMES[m.group(2)]}"
            if config["model_type"] == "llama" and m.group(2) in ("attn_q", "attn_k"):
                heads = config["num_attention_heads" if m.group(2) == "attn_q" else "num_key_value_heads"]
                value = _unpermute(value, heads)
        elif stem in GLOBAL_NAMES:
            name = GLOBAL_NAMES[stem]
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


def save_tokenizer(src: Path, out: Path) -> None:
    """A tokenizer.json beside the file wins; else transformers rebuilds one from the GGUF metadata."""
    beside = src.parent / "tokenizer.json"
    if beside.exists():
        for f in src.parent.glob("*.json"):
            if f.name.startswith(("tokenizer", "special_tokens")):
                (out / f.name).write_bytes(f.read_bytes())
        return
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name).save_pretrained(str(out))
    except ImportError as e:
        raise ModelError(f"{src} has no tokenizer.json beside it; rebuilding one from the GGUF metadata "
                         f"needs transformers, torch and gguf (pip install 'embed[oracle]' gguf)") from e


def gguf_to_checkpoint(src: Path, out: Path) -> Path:
    """Write an MLX checkpoint (config.json, model.safetensors, tokenizer) that the normal load chain reads."""
    weights, metadata = read_gguf(src)
    config = gguf_config(metadata, weights)
    weights = {k: v for k, v in hf_weights(weights, config).items() if not k.startswith("lm_head.")}
    if (q := quantization_config(weights)) is not None:
        config["quantization"] = q
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(src, out)
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
