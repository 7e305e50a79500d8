"""GTE v1.5 / multilingual (Alibaba-NLP's "new" architecture: gte-*-en-v1.5, gte-multilingual-base,
snowflake-arctic-embed-m-v2.0): NomicBERT's post-LN rotary layers with biases, and NTK-scaled RoPE.

The published checkpoints run Alibaba-NLP/new-impl's remote code (model_type "new", or "gte"); transformers' port
(model_type "gte") reads and writes the same weight names, with `rope_parameters` for `rope_theta`/`rope_scaling`.
The port has no NTK scaling (it fails on the published `rope_scaling`) nor log-n attention scaling: both follow the
remote code here.
"""

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..errors import ModelError
from ..native import fastmath
from .attention import Rotation
from .base import BaseModelArgs, checkpoint_keys, fuse
from .bert import run_layers
from .nomic_bert import GatedMLP


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rope_parameters: dict | None = None  # transformers 5: rope_theta and the scaling in one dict
    position_embedding_type: str = "rope"
    layer_norm_type: str = "layer_norm"
    logn_attention_scale: bool = False
    logn_attention_clip1: bool = False

    def __post_init__(self):
        if self.position_embedding_type != "rope" or self.layer_norm_type != "layer_norm":
            raise ModelError(f"unsupported GTE configuration: position_embedding_type "
                             f"{self.position_embedding_type!r}, layer_norm_type {self.layer_norm_type!r} "
                             f"(supported: rope, layer_norm)")
        if self.rope_type not in ("default", "ntk"):
            raise ModelError(f"unsupported GTE RoPE scaling {self.rope_type!r}; supported: ntk")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope(self) -> dict:
        return self.rope_parameters or self.rope_scaling or {}

    @property
    def rope_type(self) -> str:
        return self.rope.get("rope_type", self.rope.get("type", "default"))

    def rope_periods(self) -> np.ndarray:
        """RoPE's period per rotated pair: base ** (2i / d), or the remote code's fixed (and mixed) NTK scaling,
        which applies at every length once `factor` > 1 (NTKScalingRotaryEmbedding)."""
        d = self.head_dim
        base = float(self.rope.get("rope_theta", self.rope_theta))
        exponents = np.arange(0, d, 2, dtype=np.float64) / d
        factor = float(self.rope.get("factor", 1.0)) if self.rope_type == "ntk" else 1.0
        mixed_b = self.rope.get("mixed_b")
        if factor <= 1:
            periods = base**exponents
        elif mixed_b is None:
            periods = (base * factor) ** exponents * factor ** (2 / d)
        else:
            a = math.log(factor) / (d / 2) ** mixed_b
            periods = base**exponents * np.exp(a * np.arange(1, d // 2 + 1) ** mixed_b)
        return periods.astype(np.float32)


class Embeddings(nn.Module):
    """Word embeddings plus token type 0's (gte-base-en-v1.5 has no type table), then LayerNorm."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        if args.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        x = self.word_embeddings(input_ids)
        if "token_type_embeddings" in self:
            x = x + self.token_type_embeddings(mx.zeros((1, 1), dtype=mx.int32))
        return self.LayerNorm(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.head_dim = args.head_dim
        self.qkv_proj = fastmath.Linear(args.hidden_size, 3 * args.hidden_size)
        self.o_proj = fastmath.Linear(args.hidden_size, args.hidden_size)
        self.rotation = Rotation(self.head_dim, args.rope_periods())

    def __call__(self, x: mx.array, mask: mx.array | fastmath.PackedTokens, q_scale: mx.array | None) -> mx.array:
        """The heads' context (B, L, H * D), before `o_proj`; packed with `PackedTokens` for the mask."""
        return self.rotation.self_attention(self.qkv_proj(x), self.n_heads, mask, q_scale)


class Layer(nn.Module):
    """Attention, then the gated MLP (up and gate in one projection), each added to its input and post-LN."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.mlp = GatedMLP(args.hidden_size, args.intermediate_size, fastmath.activation(args.hidden_act),
                            bias_in=False, bias_out=True)
        self.attn_ln = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.mlp_ln = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | fastmath.PackedTokens,
                 q_scale: mx.array | None = None) -> mx.array:
        x = fastmath.linear_add_norm(self.attention.o_proj, self.attention(x, mask, q_scale), x, self.attn_ln)
        return fastmath.linear_add_norm(self.mlp.down_proj, self.mlp.gated(x), x, self.mlp_ln)

    def parts(self) -> fastmath.LayerParts:
        return fastmath.LayerParts(self.attention.qkv_proj, self.attention.o_proj, self.attn_ln,
                                    self.mlp.up_gate_proj, self.mlp.act, self.mlp.down_proj, self.mlp_ln,
                                    self.attention.n_heads, gated=True)


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [Layer(args) for _ in range(args.num_hidden_layers)]


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embeddings = Embeddings(args)
        self.encoder = Encoder(args)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """The last hidden state (B, L, H); `attention_mask` is (B, L), nonzero on real tokens. `token_types` is
        ignored: embed sends it only for a cross-encoder's pairs, and a single text's are all 0. On the native CPU
        path, without log-n scaling, the layers run on the real tokens alone, as BERT's do."""
        mask = (attention_mask != 0)[:, None, None, :]
        x = self.embeddings(input_ids)
        if self.args.logn_attention_scale:
            q_scale = self.logn_scale(attention_mask)
            for layer in self.encoder.layer:
                x = layer(x, mask, q_scale)
            return x
        packed = fastmath.PackedTokens.of(attention_mask, x, self.args.head_dim)
        if packed is None:
            return run_layers(self.encoder.layer, x, mask)
        rotation = self.encoder.layer[0].attention.rotation  # every layer turns alike
        return run_layers(self.encoder.layer, x, packed, rotary=rotation.table(attention_mask.shape[1]))

    def packs_tokens(self) -> bool:
        """Whether batches run on their real tokens alone here: padding then costs the planner little."""
        return (not self.args.logn_attention_scale
                and fastmath.native_heads(self.embeddings.LayerNorm.weight.dtype, self.args.head_dim))

    def logn_scale(self, attention_mask: mx.array) -> mx.array:
        """`logn_attention_scale`: queries times log(tokens) / log(max_position_embeddings), per text, at least 1
        with `logn_attention_clip1` (as the remote code clips)."""
        tokens = (attention_mask != 0).sum(axis=1).astype(mx.float32)
        scale = mx.log(tokens) / math.log(self.args.max_position_embeddings)
        if self.args.logn_attention_clip1:
            scale = mx.maximum(scale, 1.0)
        return scale[:, None, None, None]

    # transformers' port's in-memory names -> the published ones (its save_pretrained writes those back).
    renames = ((".self_attn.", ".attention."), (".post_attention_layernorm.", ".attn_ln."),
               (".post_mlp_layernorm.", ".mlp_ln."))
    heads = ("pooler.", "lm_head.", "classifier.")  # what `sanitize` drops: task heads this model lacks
    buffers = ("inv_freq", "position_ids", "token_type_ids")

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop heads and buffers, strip a task-model prefix, take either naming, and fuse separate q/k/v
        (`pack_qkv` false, or the port's) into `qkv_proj` and the port's up/gate into `up_gate_proj`."""
        out = checkpoint_keys(weights, prefixes={"new.": "", "gte.": "", "model.": "", "layers.": "encoder.layer."},
                              drop=self.heads, drop_suffixes=self.buffers, renames=self.renames)
        return fuse(out, self.args.num_hidden_layers, "encoder.layer.{}.", {
            "attention.qkv_proj": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
            "mlp.up_gate_proj": ("mlp.up_proj", "mlp.gate_proj"),
        })
