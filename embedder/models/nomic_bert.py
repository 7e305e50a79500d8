"""NomicBERT (nomic-embed-text-v1, v1.5): a post-LN BERT with rotary positions, fused q/k/v and a gated MLP.

The published checkpoints come from Nomic's remote code (GPT-2 style config names: n_embd, n_head, ...); transformers'
port writes BERT names to config.json (and, through its conversion mapping, the remote code's weight names).
Both are read here; `sanitize` also takes the port's in-memory weight names.
"""

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError
from ..native import fastmath
from .attention import Rotation
from .base import BaseModelArgs, checkpoint_keys, fuse
from .bert import run_layers

# transformers' NomicBertConfig name -> the published config's name.
_PORT_KEYS = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
              "intermediate_size": "n_inner", "layer_norm_eps": "layer_norm_epsilon"}
# The remote code's gated activations: value * act(gate).
_GATES = {"swiglu": nn.silu, "geglu": fastmath.gelu, "glu": mx.sigmoid}


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    vocab_size: int
    n_embd: int
    n_head: int
    n_layer: int
    n_inner: int
    head_dim: int | None = None
    type_vocab_size: int = 2
    layer_norm_epsilon: float = 1e-12
    activation_function: str = "swiglu"
    hidden_act: str | None = None  # transformers' port: the gate's activation by name, instead of the above
    rotary_emb_base: float = 10000.0
    rotary_emb_fraction: float = 1.0
    rotary_emb_interleaved: bool = False
    rotary_emb_scale_base: float | None = None
    rotary_scaling_factor: float | None = None
    max_trained_positions: int = 2048
    qkv_proj_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True
    prenorm: bool = False
    pad_vocab_size_multiple: int = 1

    @classmethod
    def from_dict(cls, params: dict):
        """The published config as is; transformers' port's renamed onto it (no biases, full-width RoPE)."""
        if "n_embd" not in params:
            rope = params.get("rope_parameters") or {}
            if rope.get("rope_type", "default") != "default":
                raise ModelError(f"unsupported NomicBERT rope_type {rope['rope_type']!r}; supported: default")
            params = {**{_PORT_KEYS.get(k, k): v for k, v in params.items()},
                      "hidden_act": params.get("hidden_act", "silu"), "rotary_emb_base": rope.get("rope_theta", 1000.0),
                      "qkv_proj_bias": False, "mlp_fc1_bias": False, "mlp_fc2_bias": False}
        return super().from_dict(params)

    def __post_init__(self):
        unsupported = {
            "prenorm": self.prenorm,
            "rotary_emb_scale_base (xPos)": self.rotary_emb_scale_base is not None,
            "rotary_emb_fraction <= 0 (absolute positions)": self.rotary_emb_fraction <= 0,
            f"activation_function {self.activation_function!r} (supported: {', '.join(_GATES)})":
                self.hidden_act is None and self.activation_function not in _GATES,
        }
        if found := [name for name, present in unsupported.items() if present]:
            raise ModelError(f"unsupported NomicBERT configuration: {', '.join(found)}")
        # The remote code pads the embedding table to a multiple, as its checkpoints hold it.
        self.vocab_size = -(-self.vocab_size // self.pad_vocab_size_multiple) * self.pad_vocab_size_multiple

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def gate_activation(self) -> Callable[[mx.array], mx.array]:
        return fastmath.activation(self.hidden_act) if self.hidden_act else _GATES[self.activation_function]


class GatedMLP(nn.Module):
    """down(value * act(gate)), value and gate from one fused projection (see `sanitize`)."""

    def __init__(self, dims: int, hidden: int, act: Callable[[mx.array], mx.array], bias_in: bool, bias_out: bool):
        super().__init__()
        self.up_gate_proj = fastmath.Linear(dims, 2 * hidden, bias=bias_in)
        self.down_proj = fastmath.Linear(hidden, dims, bias=bias_out)
        self.act = act

    def gated(self, x: mx.array) -> mx.array:
        """The input of `down_proj` (which the layer fuses with its residual and norm)."""
        return fastmath.linear_gated(self.up_gate_proj, x, self.act)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_head
        self.rotary_dims = int(args.dim_head * args.rotary_emb_fraction)
        self.args = args
        width = args.n_head * args.dim_head
        self.Wqkv = fastmath.Linear(args.n_embd, 3 * width, bias=args.qkv_proj_bias)
        self.out_proj = fastmath.Linear(width, args.n_embd, bias=args.qkv_proj_bias)

    def base(self, length: int) -> float:
        """The rotary base; with `rotary_scaling_factor`, the remote code's dynamic NTK raises it for batches
        longer than the trained positions (from the padded length, as there)."""
        factor, trained, d = self.args.rotary_scaling_factor, self.args.max_trained_positions, self.rotary_dims
        if not factor or length <= trained:
            return self.args.rotary_emb_base
        return self.args.rotary_emb_base * (factor * length / trained - (factor - 1)) ** (d / (d - 2))

    def rotation(self, length: int) -> Rotation:
        """RoPE for a batch padded to `length`."""
        return Rotation.of_base(self.rotary_dims, self.base(length), self.args.rotary_emb_interleaved)

    def __call__(self, x: mx.array, mask: mx.array | fastmath.PackedTokens) -> mx.array:
        """The heads' context (B, L, H * D), before `out_proj`; packed with `PackedTokens` for the mask."""
        return self.rotation(mask.shape[-1]).self_attention(self.Wqkv(x), self.n_heads, mask)


class Layer(nn.Module):
    """Attention, then the gated MLP, each added to its input and post-LN (`prenorm` false, as published)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attn = Attention(args)
        self.mlp = GatedMLP(args.n_embd, args.n_inner, args.gate_activation, args.mlp_fc1_bias, args.mlp_fc2_bias)
        self.norm1 = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.norm2 = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)

    def __call__(self, x: mx.array, mask: mx.array | fastmath.PackedTokens) -> mx.array:
        x = fastmath.linear_add_norm(self.attn.out_proj, self.attn(x, mask), x, self.norm1)
        return fastmath.linear_add_norm(self.mlp.down_proj, self.mlp.gated(x), x, self.norm2)

    def parts(self) -> fastmath.LayerParts:
        return fastmath.LayerParts(self.attn.Wqkv, self.attn.out_proj, self.norm1, self.mlp.up_gate_proj,
                                    self.mlp.act, self.mlp.down_proj, self.norm2, self.attn.n_heads, gated=True)


class Embeddings(nn.Module):
    """Word embeddings plus token type 0's (no position table: positions are rotary)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.n_embd)
        if args.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.n_embd)

    def __call__(self, input_ids: mx.array) -> mx.array:
        x = self.word_embeddings(input_ids)
        if "token_type_embeddings" in self:
            return x + self.token_type_embeddings(mx.zeros((1, 1), dtype=mx.int32))
        return x


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layers = [Layer(args) for _ in range(args.n_layer)]


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embeddings = Embeddings(args)
        self.emb_ln = nn.LayerNorm(args.n_embd, eps=args.layer_norm_epsilon)
        self.encoder = Encoder(args)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """The last hidden state (B, L, H); `attention_mask` is (B, L), nonzero on real tokens. `token_types` is
        ignored: embed sends it only for a cross-encoder's pairs, and a single text's are all 0. On the native CPU
        path the layers run on the real tokens alone, as BERT's do."""
        x = self.emb_ln(self.embeddings(input_ids))
        packed = fastmath.PackedTokens.of(attention_mask, x, self.args.dim_head)
        if packed is None:
            return run_layers(self.encoder.layers, x, (attention_mask != 0)[:, None, None, :])
        length = attention_mask.shape[1]  # every layer turns alike
        rotary = self.encoder.layers[0].attn.rotation(length).table(length)
        return run_layers(self.encoder.layers, x, packed, rotary=rotary)

    def packs_tokens(self) -> bool:
        """Whether batches run on their real tokens alone here: padding then costs the planner little."""
        return fastmath.native_heads(self.emb_ln.weight.dtype, self.args.dim_head)

    # transformers' port's in-memory names -> the published ones (its save_pretrained writes those back); the
    # published fc11 (value), fc12 (gate) and fc2 -> the port's, to be fused below.
    renames = (("embeddings.LayerNorm.", "emb_ln."), (".self_attn.o_proj.", ".attn.out_proj."),
               (".post_attention_layernorm.", ".norm1."), (".post_mlp_layernorm.", ".norm2."),
               (".mlp.fc11.", ".mlp.up_proj."), (".mlp.fc12.", ".mlp.gate_proj."), (".mlp.fc2.", ".mlp.down_proj."))
    heads = ("pooler.", "cls.", "lm_head.", "classifier.")  # what `sanitize` drops: task heads this model lacks
    buffers = ("inv_freq", "position_ids", "token_type_ids")

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop heads and buffers, strip a task-model prefix, take either naming, and fuse q/k/v into `Wqkv` and
        value/gate (fc11/up_proj, fc12/gate_proj) into `up_gate_proj`."""
        prefixes = {"bert.": "", "nomic_bert.": "", "model.": "", "layers.": "encoder.layers."}
        out = checkpoint_keys(weights, prefixes=prefixes, drop=self.heads, drop_suffixes=self.buffers,
                              renames=self.renames)
        return fuse(out, self.args.n_layer, "encoder.layers.{}.", {
            "attn.Wqkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            "mlp.up_gate_proj": ("mlp.up_proj", "mlp.gate_proj"),
        })

