"""MPNet (sentence-transformers/all-mpnet-base-v2, multi-qa-mpnet-*): BERT-style post-LN layers, RoBERTa-style
positions, and a relative position bias shared by every layer, added to the attention scores (in the native
attention kernel on the CPU)."""

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..native import fastmath
from .attention import relative_position_buckets
from .base import BaseModelArgs, checkpoint_keys, fuse
from .bert import Layer, run_layers
from .bert import Model as BertModel

# transformers computes the buckets with 32 whatever the config says (MPNetEncoder.compute_position_bias).
BUCKETS, MAX_DISTANCE = 32, 128


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    vocab_size: int
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    pad_token_id: int = 1
    relative_attention_num_buckets: int = 32


class Embeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.pad_token_id = args.pad_token_id

    def __call__(self, input_ids: mx.array) -> mx.array:
        not_pad = (input_ids != self.pad_token_id).astype(mx.int32)  # numbered from pad_token_id + 1, as RoBERTa
        positions = mx.cumsum(not_pad, axis=1) * not_pad + self.pad_token_id
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    """Query, key and value as one fused projection (see `sanitize`), then `o`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.head_dim = args.hidden_size // args.num_attention_heads
        self.qkv = fastmath.Linear(args.hidden_size, 3 * args.hidden_size)
        self.o = fastmath.Linear(args.hidden_size, args.hidden_size)

    def __call__(self, x: mx.array, context: tuple[mx.array, mx.array]) -> mx.array:
        """The heads' context (B, L, H * D), before `o`; `context` is the key mask and the position bias."""
        mask, position_bias = context
        return fastmath.self_attention(self.qkv(x), self.n_heads, 1 / math.sqrt(self.head_dim), mask, position_bias)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attn = SelfAttention(args)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array, context: tuple[mx.array, mx.array]) -> mx.array:
        return fastmath.linear_add_norm(self.attn.o, self.attn(x, context), x, self.LayerNorm)

    def parts(self) -> tuple[nn.Module, nn.Module, nn.Module, int]:
        """As `bert.Attention.parts`."""
        return self.attn.qkv, self.attn.o, self.LayerNorm, self.attn.n_heads


class Encoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.layer = [Layer(args, Attention) for _ in range(args.num_hidden_layers)]
        self.relative_attention_bias = nn.Embedding(args.relative_attention_num_buckets, args.num_attention_heads)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embeddings = Embeddings(args)
        self.encoder = Encoder(args)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        """The last hidden state; `attention_mask` is (B, L), nonzero on real tokens (MPNet has no token types).
        On the native CPU path the layers run on the real tokens alone, as BERT's do (`fastmath.PackedTokens`);
        the bias depends on relative positions only, so its top-left block serves every packed sequence."""
        x = self.embeddings(input_ids)
        packed = fastmath.PackedTokens.of(attention_mask, x, self.args.hidden_size // self.args.num_attention_heads)
        L = input_ids.shape[1] if packed is None else packed.longest
        buckets = mx.array(relative_position_buckets(L, BUCKETS, MAX_DISTANCE))
        position_bias = self.encoder.relative_attention_bias(buckets).transpose(2, 0, 1).astype(x.dtype)  # (H, L, L)
        keys = (attention_mask != 0)[:, None, None, :] if packed is None else packed
        return run_layers(self.encoder.layer, x, keys, position_bias)

    packs_tokens = BertModel.packs_tokens  # the same embeddings norm, sizes and packed layers

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop heads and buffers, strip a task-model prefix, fuse q/k/v into one projection."""
        out = checkpoint_keys(weights, prefixes={"mpnet.": ""}, drop=("pooler.", "lm_head.", "classifier."),
                              drop_suffixes=("position_ids",))
        return fuse(out, self.args.num_hidden_layers, "encoder.layer.{}.attention.attn.", {"qkv": ("q", "k", "v")})
