"""ModernBERT: a pre-norm encoder with RoPE, GeGLU and alternating global/local (windowed) attention."""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError
from ..native import fastmath, kernels
from ..pooling import pool
from .attention import Rotation, allowed_keys, masked_attention, rope_theta
from .base import BaseModelArgs, checkpoint_keys


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_activation: str = "gelu"
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    layer_types: list[str] | None = None
    rope_parameters: dict | None = None
    classifier_pooling: str = "cls"  # the sequence classifier's: the first token's state, or the tokens' mean
    classifier_bias: bool = False
    classifier_activation: str = "gelu"

    def __post_init__(self):
        if self.layer_types is None:  # configs before transformers 5 give the pattern as one number
            self.layer_types = [
                "sliding_attention" if i % self.global_attn_every_n_layers else "full_attention"
                for i in range(self.num_hidden_layers)
            ]


class Embeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias)

    def __call__(self, input_ids: mx.array) -> mx.array:
        return self.norm(self.tok_embeddings(input_ids))


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_type: str):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.head_dim = args.hidden_size // args.num_attention_heads
        self.Wqkv = fastmath.Linear(args.hidden_size, 3 * args.hidden_size, bias=args.attention_bias)
        self.Wo = fastmath.Linear(args.hidden_size, args.hidden_size, bias=args.attention_bias)
        default = args.global_rope_theta if layer_type == "full_attention" else args.local_rope_theta
        self.theta = rope_theta(args.rope_parameters, layer_type, default)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, D = x.shape
        q, k, v = self.Wqkv(x).reshape(B, L, 3, self.n_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=0)
        out = masked_attention(q, k, v, self.head_dim**-0.5, mask)
        return self.Wo(out.transpose(0, 2, 1, 3).reshape(B, L, D))


class MLP(nn.Module):
    """GeGLU: Wi projects to value and gate halves."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.Wi = fastmath.Linear(args.hidden_size, 2 * args.intermediate_size, bias=args.mlp_bias)
        self.Wo = fastmath.Linear(args.intermediate_size, args.hidden_size, bias=args.mlp_bias)
        self.act = fastmath.activation(args.hidden_activation)

    def __call__(self, x: mx.array) -> mx.array:
        return self.Wo(fastmath.linear_gated(self.Wi, x, self.act, act_on_value=True))


class Layer(nn.Module):
    def __init__(self, args: ModelArgs, index: int):
        super().__init__()
        self.layer_type = args.layer_types[index]
        # The first layer reads the already-normalized embeddings: no attention norm, no weights for one.
        self.attn_norm = (
            nn.LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias) if index > 0 else None
        )
        self.attn = Attention(args, self.layer_type)
        self.mlp_norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias)
        self.mlp = MLP(args)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = x + self.attn(self.attn_norm(x) if self.attn_norm is not None else x, mask)
        return x + self.mlp(self.mlp_norm(x))

    def parts(self, rotary: kernels.Rotary, window: int) -> fastmath.LayerParts:
        return fastmath.LayerParts(self.attn.Wqkv, self.attn.Wo, self.attn_norm, self.mlp.Wi, self.mlp.act,
                                   self.mlp.Wo, self.mlp_norm, self.attn.n_heads, gated=True, act_on_value=True,
                                   pre_norm=True, rotary=rotary, window=window)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embeddings = Embeddings(args)
        self.layers = [Layer(args, i) for i in range(args.num_hidden_layers)]
        self.final_norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """The last hidden state (B, L, H) for every token: no MaskedLM head, whatever the checkpoint. ModernBERT
        has no token types; `token_types` is accepted and ignored, as its tokenizer sends none."""
        x = self.embeddings(input_ids)
        packed = fastmath.PackedTokens.of(attention_mask, x, self.head_dim)
        if packed is not None and (out := self.packed_layers(x, packed)) is not None:
            return packed.unpack(self.final_norm(out))
        masks = {
            "full_attention": allowed_keys(attention_mask),
            # Local layers see keys at most local_attention // 2 positions away, on both sides.
            "sliding_attention": allowed_keys(attention_mask, max_distance=self.window),
        }
        for layer in self.layers:
            x = layer(x, masks[layer.layer_type])
        return self.final_norm(x)

    @property
    def head_dim(self) -> int:
        return self.args.hidden_size // self.args.num_attention_heads

    @property
    def window(self) -> int:
        """How far a local layer's keys may be from their query, on either side."""
        return self.args.local_attention // 2

    def packed_layers(self, x: mx.array, packed: fastmath.PackedTokens) -> mx.array | None:
        """Every layer in one native call on the batch's real tokens (its rows, before the final norm); None where
        a part has no native kernel, and the padded batch runs instead."""
        length = packed.shape[1]
        tables = {theta: Rotation.of_base(self.head_dim, theta).table(length)
                  for theta in {layer.attn.theta for layer in self.layers}}
        parts = [layer.parts(tables[layer.attn.theta], self.window if layer.layer_type == "sliding_attention" else 0)
                 for layer in self.layers]
        out = fastmath.encoder_layers(packed.pack(x), packed, parts)
        return None if out is None else mx.array(out)

    def packs_tokens(self) -> bool:
        """Whether batches run on their real tokens alone here: padding then costs the planner little."""
        return (fastmath.native_heads(self.embeddings.norm.weight.dtype, self.head_dim)
                and self.layers[0].mlp.act is fastmath.gelu)

    heads = ("head.", "decoder.", "classifier.", "drop.")  # what `sanitize` drops: task heads this model lacks

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Keep the encoder of a MaskedLM or task checkpoint: strip `model.`, drop heads."""
        return checkpoint_keys(weights, prefixes={"model.": ""}, drop=self.heads)


class Head(nn.Module):
    """ModernBertPredictionHead: projection, activation, LayerNorm."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size, bias=args.classifier_bias)
        self.act = fastmath.activation(args.classifier_activation)
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.norm_eps, bias=args.norm_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(self.act(self.dense(x)))


class Classifier(Model):
    """ModernBertForSequenceClassification (gte-reranker-modernbert and the like): logits per pair, from the
    first token's state or the tokens' mean as `classifier_pooling` says."""

    heads = ("decoder.", "drop.")

    def __init__(self, args: ModelArgs, labels: int):
        super().__init__(args)
        if args.classifier_pooling not in ("cls", "mean"):
            raise ModelError(f"unsupported classifier_pooling {args.classifier_pooling!r}; supported: cls, mean")
        self.head = Head(args)
        self.classifier = nn.Linear(args.hidden_size, labels)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        hidden = super().__call__(input_ids, attention_mask)
        pooled = pool(hidden, attention_mask, ("cls" if self.args.classifier_pooling == "cls" else "mean",))
        return self.classifier(self.head(pooled))

