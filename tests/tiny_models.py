"""Small random-weight models built with transformers + sentence-transformers, saved as a user would save them."""

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def save_sentence_transformer(hf_dir: Path, out: Path, pooling: str, normalize: bool, max_seq_length: int,
                              dense_out: int | None = None) -> Path:
    """Wrap a saved transformers model in sentence-transformers modules and save the whole model to `out`."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    transformer = models.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    dim = transformer.get_embedding_dimension()
    modules = [transformer, models.Pooling(dim, pooling_mode=pooling)]
    if dense_out is not None:
        modules.append(models.Dense(dim, dense_out, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out), safe_serialization=True)
    return out


def tiny_encoder(kind: str, tokenizer_src: Path, work: Path, **config_overrides) -> Path:
    """A 2-layer BERT or XLM-RoBERTa with random weights and the given tokenizer, saved to `work/kind`."""
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(0)
    common = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, **config_overrides)
    if kind == "bert":
        model = BertModel(BertConfig(max_position_embeddings=128, **common), add_pooling_layer=False)
    elif kind == "xlm-roberta":
        model = XLMRobertaModel(XLMRobertaConfig(max_position_embeddings=130, pad_token_id=1, type_vocab_size=1,
                                                 layer_norm_eps=1e-5, **common), add_pooling_layer=False)
    else:
        raise ValueError(kind)
    out = work / f"hf-{kind}"
    model.save_pretrained(str(out), safe_serialization=True)
    copy_tokenizer(tokenizer_src, out)
    return out
