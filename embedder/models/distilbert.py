"""DistilBERT (msmarco-distilbert-*, multi-qa-distilbert-*): BERT's post-LN layers with no token types, its
checkpoint keys renamed onto `bert.Model`."""

from dataclasses import dataclass

import mlx.core as mx

from . import bert
from .base import BaseModelArgs, checkpoint_keys

# transformers' DistilBertModel names -> BertModel's, applied in order to each key.
_RENAMES = (
    ("transformer.layer.", "encoder.layer."),
    (".attention.q_lin.", ".attention.self.query."),
    (".attention.k_lin.", ".attention.self.key."),
    (".attention.v_lin.", ".attention.self.value."),
    (".attention.out_lin.", ".attention.output.dense."),
    (".sa_layer_norm.", ".attention.output.LayerNorm."),
    (".ffn.lin1.", ".intermediate.dense."),
    (".ffn.lin2.", ".output.dense."),
    (".output_layer_norm.", ".output.LayerNorm."),
)
_HEADS = ("vocab_transform.", "vocab_layer_norm.", "vocab_projector.", "pre_classifier.", "classifier.",
          "qa_outputs.")


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str
    dim: int
    n_layers: int
    n_heads: int
    hidden_dim: int
    max_position_embeddings: int
    vocab_size: int
    activation: str = "gelu"
    pad_token_id: int = 0

    def as_bert(self) -> bert.ModelArgs:
        return bert.ModelArgs(model_type=self.model_type, hidden_size=self.dim, num_hidden_layers=self.n_layers,
                              num_attention_heads=self.n_heads, intermediate_size=self.hidden_dim,
                              max_position_embeddings=self.max_position_embeddings, vocab_size=self.vocab_size,
                              type_vocab_size=1, layer_norm_eps=1e-12, hidden_act=self.activation,
                              pad_token_id=self.pad_token_id)


class Model(bert.Model):
    def __init__(self, args: ModelArgs):
        super().__init__(args.as_bert())

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """BERT's names; a zero token-type row (DistilBERT has none), then BERT's own clean-up and q/k/v fusion."""
        renamed = checkpoint_keys(weights, prefixes={"distilbert.": ""}, drop=_HEADS, renames=_RENAMES)
        renamed["embeddings.token_type_embeddings.weight"] = mx.zeros((1, self.args.hidden_size))
        return super().sanitize(renamed)


class MaskedLM(Model):
    """DistilBertForMaskedLM (SPLADE encoders such as OpenSearch's): BERT's masked-LM head under DistilBERT's
    names."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.mlm = bert.MaskedLMHead(self.args)

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        renames = (("vocab_transform.", "mlm.dense."), ("vocab_layer_norm.", "mlm.norm."),
                   ("vocab_projector.", "mlm.decoder."))
        named = checkpoint_keys(weights, prefixes={"distilbert.": ""}, renames=renames)
        return bert.tie_decoder(super().sanitize(named))
