"""BERT and the RoBERTa family (RoBERTa, XLM-RoBERTa, CamemBERT): one encoder, two position schemes."""

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..errors import ModelError
from ..native import fastmath, kernels
from .base import BaseModelArgs, checkpoint_keys, fuse

ROBERTA_TYPES = ("roberta", "xlm-roberta", "xlm_roberta", "camembert")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    vocab_size: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    @property
    def roberta_positions(self) -> bool:
        return self.model_type in ROBERTA_TYPES


class Embeddings(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.roberta_positions = args.roberta_positions
        self.pad_token_id = args.pad_token_id

    def __call__(self, input_ids: mx.array, token_types: mx.array | None = None) -> mx.array:
        """`token_types` (B, L): 1 on a pair's second text (cross-encoders); a one-row table (RoBERTa) ignores it,
        as transformers' tokenizers for those models send none."""
        if token_types is None or self.token_type_embeddings.weight.shape[0] == 1:
            token_types = mx.zeros((1, 1), dtype=mx.int32)
        if self.roberta_positions:
            # RoBERTa numbers real tokens from pad_token_id + 1, as transformers does.
            not_pad = (input_ids != self.pad_token_id).astype(mx.int32)
            positions = mx.cumsum(not_pad, axis=1) * not_pad + self.pad_token_id
        else:
            positions = mx.arange(input_ids.shape[1])[None]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_types)
        )
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Query, key and value as one fused projection (see `sanitize`)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.head_dim = args.hidden_size // args.num_attention_heads
        self.qkv = fastmath.Linear(args.hidden_size, 3 * args.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array | fastmath.PackedTokens) -> mx.array:
        return fastmath.self_attention(self.qkv(x), self.n_heads, 1 / math.sqrt(self.head_dim), mask)


class DenseNorm(nn.Module):
    """A projection, then LayerNorm over the residual sum (BERT's *Output blocks)."""

    def __init__(self, dims_in: int, dims_out: int, eps: float):
        super().__init__()
        self.dense = fastmath.Linear(dims_in, dims_out)
        self.LayerNorm = nn.LayerNorm(dims_out, eps=eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return fastmath.linear_add_norm(self.dense, x, residual, self.LayerNorm)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.self = SelfAttention(args)
        self.output = DenseNorm(args.hidden_size, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array | fastmath.PackedTokens) -> mx.array:
        return self.output(self.self(x, mask), x)

    def parts(self) -> tuple[nn.Module, nn.Module, nn.Module, int]:
        """The fused q/k/v projection, the output projection, the LayerNorm and the head count."""
        return self.self.qkv, self.output.dense, self.output.LayerNorm, self.self.n_heads


class Intermediate(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = fastmath.Linear(args.hidden_size, args.intermediate_size)
        self.act = fastmath.activation(args.hidden_act)

    def __call__(self, x: mx.array) -> mx.array:
        return fastmath.linear_activation(self.dense, x, self.act)


class Layer(nn.Module):
    """Attention, then the feed-forward block, each post-LN; `attention` is the family's (MPNet passes its own)."""

    def __init__(self, args: ModelArgs, attention: type[nn.Module] = Attention):
        super().__init__()
        self.attention = attention(args)
        self.intermediate = Intermediate(args)
        self.output = DenseNorm(args.intermediate_size, args.hidden_size, args.layer_norm_eps)

    def __call__(self, x: mx.array, mask) -> mx.array:
        """`mask` is whatever the attention takes: BERT's key mask, MPNet's key mask and position bias (the key
        mask may be `PackedTokens`)."""
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)

    def parts(self) -> fastmath.LayerParts:
        qkv, attention_out, norm, heads = self.attention.parts()
        return fastmath.LayerParts(qkv, attention_out, norm, self.intermediate.dense, self.intermediate.act,
                                    self.output.dense, self.output.LayerNorm, heads)


def run_layers(layers: list[nn.Module], x: mx.array, keys: mx.array | fastmath.PackedTokens,
               position_bias: mx.array | None = None, rotary: kernels.Rotary | None = None) -> mx.array:
    """Post-LN layers (BERT's, or any with `parts()`) over embeddings x (B, L, D), each taking the key mask (and the
    position bias, if any). With `PackedTokens` for the keys, over the batch's real tokens alone: all layers in one
    native call where every part is native (`rotary`: the rotations of layers that turn queries and keys), else
    layer by layer."""
    packed = keys if isinstance(keys, fastmath.PackedTokens) else None
    if packed is not None:
        x = packed.pack(x)
        stacked = fastmath.encoder_layers(x, packed, [layer.parts() for layer in layers], position_bias, rotary)
        if stacked is not None:
            return packed.unpack(stacked)
    context = keys if position_bias is None else (keys, position_bias)
    for layer in layers:
        x = layer(x, context)
    return x if packed is None else packed.unpack(x)


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
        """The last hidden state; `attention_mask` is (B, L), nonzero on real tokens. On the native CPU path the
        layers run on the real tokens alone (`fastmath.PackedTokens`)."""
        x = self.embeddings(input_ids, token_types)
        packed = fastmath.PackedTokens.of(attention_mask, x, self.args.hidden_size // self.args.num_attention_heads)
        return run_layers(self.encoder.layer, x, (attention_mask != 0)[:, None, None, :] if packed is None else packed)

    def packs_tokens(self) -> bool:
        """Whether batches run on their real tokens alone here: padding then costs the planner little."""
        return fastmath.native_heads(self.embeddings.LayerNorm.weight.dtype,
                                     self.args.hidden_size // self.args.num_attention_heads)

    # what `sanitize` drops: task heads this model lacks (`linear.`: Stanford-NLP ColBERT's projection, read apart)
    heads = ("pooler.", "cls.", "lm_head.", "classifier.", "linear.")

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Drop heads and buffers, strip a task-model prefix, fuse q/k/v into one projection."""
        out = checkpoint_keys(weights, prefixes=dict.fromkeys(("bert.", "roberta.", "xlm_roberta.", "model."), ""),
                              drop=self.heads, drop_suffixes=("position_ids",))
        return fuse(out, self.args.num_hidden_layers, "encoder.layer.{}.attention.self.",
                    {"qkv": ("query", "key", "value")})


class Pooler(nn.Module):
    """BERT's pooler: the first token's state through a tanh projection."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)

    def __call__(self, first: mx.array) -> mx.array:
        return mx.tanh(self.dense(first))


class RobertaHead(nn.Module):
    """RobertaClassificationHead: a tanh projection of the first token's state, then the label projection."""

    def __init__(self, args: ModelArgs, labels: int):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)
        self.out_proj = nn.Linear(args.hidden_size, labels)

    def __call__(self, first: mx.array) -> mx.array:
        return self.out_proj(mx.tanh(self.dense(first)))


class Classifier(Model):
    """*ForSequenceClassification (cross-encoders such as ms-marco-MiniLM and bge-reranker): logits per pair.
    BERT classifies its pooler's output; the RoBERTa family has its own two-layer head."""

    heads = ("cls.", "lm_head.")

    def __init__(self, args: ModelArgs, labels: int):
        super().__init__(args)
        if args.roberta_positions:
            self.classifier = RobertaHead(args, labels)
        else:
            self.pooler = Pooler(args)
            self.classifier = nn.Linear(args.hidden_size, labels)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array, token_types: mx.array | None = None) -> mx.array:
        first = super().__call__(input_ids, attention_mask, token_types)[:, 0]
        return self.classifier(first if self.args.roberta_positions else self.pooler(first))


class MaskedLMHead(nn.Module):
    """The masked-LM head of BERT, RoBERTa and DistilBERT: a projection, its activation and LayerNorm, then one logit
    per vocabulary entry (the decoder, tied to the word embeddings where the checkpoint keeps no copy)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.hidden_size)
        self.act = fastmath.activation(args.hidden_act)
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.decoder = nn.Linear(args.hidden_size, args.vocab_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.decoder(self.norm(self.act(self.dense(x))))


# transformers' masked-LM head names (BERT's, then the RoBERTa family's) -> `MaskedLMHead`'s, in order.
_MLM_RENAMES = (
    ("cls.predictions.transform.dense.", "mlm.dense."),
    ("cls.predictions.transform.LayerNorm.", "mlm.norm."),
    ("cls.predictions.decoder.", "mlm.decoder."),
    ("cls.predictions.bias", "mlm.decoder.bias"),
    ("lm_head.dense.", "mlm.dense."),
    ("lm_head.layer_norm.", "mlm.norm."),
    ("lm_head.decoder.", "mlm.decoder."),
    ("lm_head.bias", "mlm.decoder.bias"),
)


def tie_decoder(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The decoder's weight is the word embeddings' where the checkpoint ties them and so saves one copy. A
    checkpoint with no head at all (a bare encoder) is refused by name."""
    if "mlm.dense.weight" not in weights:
        raise ModelError("the checkpoint has no masked-LM head (cls.predictions, lm_head or vocab_transform "
                         "weights): SPLADE pooling needs a *ForMaskedLM checkpoint")
    if "mlm.decoder.weight" not in weights and "embeddings.word_embeddings.weight" in weights:
        weights["mlm.decoder.weight"] = weights["embeddings.word_embeddings.weight"]
    return weights


class MaskedLM(Model):
    """*ForMaskedLM (SPLADE's sparse encoders): the last hidden state, and `mlm` to turn token states into
    vocabulary logits."""

    heads = ("pooler.", "classifier.")

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.mlm = MaskedLMHead(args)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        return tie_decoder(super().sanitize(checkpoint_keys(weights, prefixes={}, renames=_MLM_RENAMES)))
