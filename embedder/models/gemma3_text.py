"""Gemma 3 text: causal, or bidirectional as in EmbeddingGemma; local layers attend within a window."""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError
from .attention import allowed_keys, masked_attention, rope_scale, rope_theta
from .base import BaseModelArgs


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    vocab_size: int
    head_dim: int = 256
    num_key_value_heads: int = 1
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256
    sliding_window: int = 512
    sliding_window_pattern: int = 6
    layer_types: list[str] | None = None
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None
    hidden_activation: str = "gelu_pytorch_tanh"
    attention_bias: bool = False
    use_bidirectional_attention: bool = False

    def __post_init__(self):
        if self.layer_types is None:  # configs before transformers 5 give the pattern as one number
            self.layer_types = [
                "sliding_attention" if (i + 1) % self.sliding_window_pattern else "full_attention"
                for i in range(self.num_hidden_layers)
            ]


class RMSNorm(nn.Module):
    """Gemma scales by (1 + weight), so a zero weight is the identity."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, 1.0 + self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = args.query_pre_attn_scalar**-0.5
        bias = args.attention_bias
        self.q_proj = nn.Linear(args.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(args.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(args.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, args.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, args.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, args.rms_norm_eps)
        full = layer_type == "full_attention"
        default = args.rope_theta if full else args.rope_local_base_freq
        self.theta = rope_theta(args.rope_parameters, layer_type, default)
        # Old configs scale only the global layers' positions.
        self.rope_scale = rope_scale(args.rope_parameters, args.rope_scaling if full else None, layer_type)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, D = x.shape
        q = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, self.head_dim)).transpose(0, 2, 1, 3)
        k = self.k_norm(self.k_proj(x).reshape(B, L, self.n_kv_heads, self.head_dim)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=self.rope_scale, offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=self.rope_scale, offset=0)
        out = masked_attention(q, k, v, self.scale, mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.gelu_approx(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, index: int):
        super().__init__()
        self.layer_type = args.layer_types[index]
        self.self_attn = Attention(args, self.layer_type)
        self.mlp = MLP(args)
        eps = args.rms_norm_eps
        self.input_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(args.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(args.hidden_size, eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), mask))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.hidden_activation not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise ModelError(f"unsupported hidden_activation {args.hidden_activation!r}")
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args, i) for i in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array) -> mx.array:
        """The last hidden state (B, L, H); padding is masked out of every layer's keys."""
        a = self.args
        bidirectional = a.use_bidirectional_attention
        # transformers: bidirectional windows reach sliding_window // 2 each way; causal ones sliding_window - 1 back.
        window = a.sliding_window // 2 if bidirectional else a.sliding_window - 1
        masks = {
            "full_attention": allowed_keys(attention_mask, causal=not bidirectional),
            "sliding_attention": allowed_keys(attention_mask, causal=not bidirectional, max_distance=window),
        }
        x = self.embed_tokens(input_ids)
        x = x * mx.array(a.hidden_size**0.5, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, masks[layer.layer_type])
        return self.norm(x)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Keep the text model of a causal-LM checkpoint: strip `model.`, drop the LM head."""
        return {
            key.removeprefix("model."): value
            for key, value in weights.items()
            if not key.startswith("lm_head.") and not key.endswith("rotary_emb.inv_freq")
        }
