"""The T5 encoder (sentence-t5, gtr-t5; mT5): pre-norm layers with RMS norms and no biases, no absolute positions
but a bucketed relative position bias that block 0 learns and every layer adds, unscaled attention scores."""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..native import fastmath
from .attention import relative_position_buckets
from .base import BaseModelArgs, fuse


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # the head size: need not be d_model // num_heads
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str | None = None  # "relu" (T5), "gated-gelu" (T5 v1.1, mT5): None is the model type's default
    # Derived from feed_forward_proj unless config.json gives them, as transformers does.
    dense_act_fn: str | None = None
    is_gated_act: bool | None = None

    def __post_init__(self):
        if self.feed_forward_proj is None:
            self.feed_forward_proj = "gated-gelu" if self.model_type == "mt5" else "relu"
        parts = self.feed_forward_proj.split("-")
        if self.is_gated_act is None:
            self.is_gated_act = parts[0] == "gated"
        if self.dense_act_fn is None:
            # transformers' "gated-gelu" is the tanh approximation
            self.dense_act_fn = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]


class Attention(nn.Module):
    """T5Attention: no biases, no 1/sqrt(d) scaling (T5 folds it into the initialization); query, key and value as
    one fused projection (see `Model.sanitize`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_heads
        inner = args.num_heads * args.d_kv
        self.qkv = fastmath.Linear(args.d_model, 3 * inner, bias=False)
        self.o = fastmath.Linear(inner, args.d_model, bias=False)

    def __call__(self, x: mx.array, context: tuple[mx.array, mx.array]) -> mx.array:
        """`context`: the (B, 1, 1, L) key mask and the (H, L, L) position bias, which the native CPU kernel adds."""
        mask, position_bias = context
        return self.o(fastmath.self_attention(self.qkv(x), self.n_heads, 1.0, mask, position_bias))


class SelfAttentionLayer(nn.Module):
    """T5LayerSelfAttention: RMS norm (T5LayerNorm: no mean, no bias), attention, residual."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.SelfAttention = Attention(args)
        self.layer_norm = nn.RMSNorm(args.d_model, eps=args.layer_norm_epsilon)

    def __call__(self, x: mx.array, context: tuple[mx.array, mx.array]) -> mx.array:
        return x + self.SelfAttention(self.layer_norm(x), context)


class DenseReluDense(nn.Module):
    """T5DenseActDense, or with `is_gated_act` T5DenseGatedActDense: act(wi_0 x) * wi_1 x."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gated = args.is_gated_act
        if self.gated:
            self.wi_0 = fastmath.Linear(args.d_model, args.d_ff, bias=False)
            self.wi_1 = fastmath.Linear(args.d_model, args.d_ff, bias=False)
        else:
            self.wi = fastmath.Linear(args.d_model, args.d_ff, bias=False)
        self.wo = fastmath.Linear(args.d_ff, args.d_model, bias=False)
        self.act = fastmath.activation(args.dense_act_fn)

    def __call__(self, x: mx.array) -> mx.array:
        if self.gated:
            return self.wo(fastmath.linear_activation(self.wi_0, x, self.act) * self.wi_1(x))
        return self.wo(fastmath.linear_activation(self.wi, x, self.act))


class FeedForwardLayer(nn.Module):
    """T5LayerFF: RMS norm, feed-forward block, residual."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.DenseReluDense = DenseReluDense(args)
        self.layer_norm = nn.RMSNorm(args.d_model, eps=args.layer_norm_epsilon)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.DenseReluDense(self.layer_norm(x))


class Block(nn.Module):
    """An encoder T5Block: self-attention, then feed-forward (a decoder's cross-attention has no place here)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [SelfAttentionLayer(args), FeedForwardLayer(args)]

    def __call__(self, x: mx.array, context: tuple[mx.array, mx.array]) -> mx.array:
        return self.layer[1](self.layer[0](x, context))

    def parts(self) -> fastmath.LayerParts:
        attention, feed_forward = self.layer[0], self.layer[1].DenseReluDense
        gated = feed_forward.gated
        return fastmath.LayerParts(
            attention.SelfAttention.qkv, attention.SelfAttention.o, attention.layer_norm,
            feed_forward.wi_0 if gated else feed_forward.wi, feed_forward.act, feed_forward.wo,
            self.layer[1].layer_norm, attention.SelfAttention.n_heads, pre_norm=True,
            gate=feed_forward.wi_1 if gated else None, scale=1.0)


class Encoder(nn.Module):
    """T5Stack as an encoder; the relative position bias (block 0's in transformers) is held here, shared by all."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.block = [Block(args) for _ in range(args.num_layers)]
        self.relative_attention_bias = nn.Embedding(args.relative_attention_num_buckets, args.num_heads)
        self.final_layer_norm = nn.RMSNorm(args.d_model, eps=args.layer_norm_epsilon)

    def __call__(self, x: mx.array, attention_mask: mx.array) -> mx.array:
        buckets = relative_position_buckets(x.shape[1], self.args.relative_attention_num_buckets,
                                            self.args.relative_attention_max_distance)
        position_bias = self.relative_attention_bias(mx.array(buckets)).transpose(2, 0, 1).astype(x.dtype)
        packed = fastmath.PackedTokens.of(attention_mask, x, self.args.d_kv)
        if packed is not None:  # every block in one native call on the real tokens, where every part has a kernel
            out = fastmath.encoder_layers(packed.pack(x), packed, [block.parts() for block in self.block],
                                          position_bias)
            if out is not None:
                return packed.unpack(self.final_layer_norm(mx.array(out)))
        context = ((attention_mask != 0)[:, None, None, :], position_bias)
        for block in self.block:
            x = block(x, context)
        return self.final_layer_norm(x)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.shared = nn.Embedding(args.vocab_size, args.d_model)  # not scaled by sqrt(d_model), as T5 runs it
        self.encoder = Encoder(args)

    def packs_tokens(self) -> bool:
        """Whether batches run on their real tokens alone here: padding then costs the planner little."""
        return (fastmath.native_heads(self.shared.weight.dtype, self.args.d_kv)
                and self.encoder.block[0].parts().feed_forward() is not None)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """The last hidden state (B, L, d_model), after the final norm; `attention_mask` is (B, L), nonzero on real
        tokens. T5 has no token types: `token_types` is accepted and ignored, as its tokenizer sends none."""
        return self.encoder(self.shared(input_ids), attention_mask)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """The encoder of a T5EncoderModel, T5Model or T5ForConditionalGeneration checkpoint: drop the decoder and
        the LM head; the encoder's own embedding table where the checkpoint has one (transformers runs it when it
        differs from `shared`); block 0's relative position bias to the encoder; q/k/v fused into one projection.
        A checkpoint that embed wrote (already in these names) passes unchanged."""
        out = {k: v for k, v in weights.items() if not k.startswith(("decoder.", "lm_head."))}
        for key in [k for k in out if k.startswith("encoder.embed_tokens.")]:
            out["shared." + key.removeprefix("encoder.embed_tokens.")] = out.pop(key)
        bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        if bias in out:
            out["encoder.relative_attention_bias.weight"] = out.pop(bias)
        return fuse(out, self.args.num_layers, "encoder.block.{}.layer.0.SelfAttention.", {"qkv": ("q", "k", "v")})
