"""Small random-weight models built with transformers + sentence-transformers, saved as a user would save them."""

import json
import shutil
from pathlib import Path

from reference import require_oracle

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)


def save_sentence_transformer(hf_dir: Path, out: Path, pooling: str, normalize: bool, max_seq_length: int,
                              dense_out: int | None = None, *, linear: tuple[int, ...] = (),
                              prompts: dict[str, str] | None = None, padding_side: str | None = None) -> Path:
    """Wrap a saved transformers model in sentence-transformers modules and save the whole model to `out`.

    `dense_out` adds one Tanh Dense layer with bias; `linear` adds bias-free Identity Dense layers of
    these widths (EmbeddingGemma's projections); `padding_side="left"` is how Qwen3-Embedding ships.
    """
    require_oracle()
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    transformer = models.Transformer(str(hf_dir), max_seq_length=max_seq_length)
    if padding_side is not None:
        transformer.tokenizer.padding_side = padding_side
    dim = transformer.get_embedding_dimension()
    modules = [transformer, models.Pooling(dim, pooling_mode=pooling)]
    if dense_out is not None:
        modules.append(models.Dense(dim, dense_out, activation_function=torch.nn.Tanh()))
    for width in linear:
        modules.append(models.Dense(dim, width, bias=False, activation_function=torch.nn.Identity()))
        dim = width
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu", prompts=prompts).save(str(out), safe_serialization=True)
    return out


def tiny_encoder(kind: str, tokenizer_src: Path, work: Path, **config_overrides) -> Path:
    """A 2-layer BERT, DistilBERT, MPNet or XLM-RoBERTa with random weights and the given tokenizer, saved to `work/kind`."""
    require_oracle()
    import torch
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, MPNetConfig, MPNetModel,
                              XLMRobertaConfig, XLMRobertaModel)

    torch.manual_seed(0)
    common = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, **config_overrides)
    if kind == "bert":
        model = BertModel(BertConfig(max_position_embeddings=128, **common), add_pooling_layer=False)
    elif kind == "distilbert":
        model = DistilBertModel(DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                 max_position_embeddings=128, **config_overrides))
    elif kind == "mpnet":
        model = MPNetModel(MPNetConfig(max_position_embeddings=130, pad_token_id=1, layer_norm_eps=1e-5, **common),
                           add_pooling_layer=False)
    elif kind == "xlm-roberta":
        model = XLMRobertaModel(XLMRobertaConfig(max_position_embeddings=130, pad_token_id=1, type_vocab_size=1,
                                                 layer_norm_eps=1e-5, **common), add_pooling_layer=False)
    else:
        raise ValueError(kind)
    out = work / f"hf-{kind}"
    model.save_pretrained(str(out), safe_serialization=True)
    copy_tokenizer(tokenizer_src, out)
    return out


_SMALL = dict(vocab_size=30522, hidden_size=64, intermediate_size=128, num_attention_heads=4,
              max_position_embeddings=256, pad_token_id=0, bos_token_id=101, eos_token_id=102)
_DECODER = dict(_SMALL, num_hidden_layers=2, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
# kind -> (transformers config class, its overrides). Windows are tiny so that long test texts cross them.
TINY = {
    "modernbert": ("ModernBertConfig", dict(
        _SMALL, num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=8,
        cls_token_id=101, sep_token_id=102)),
    "embeddinggemma": ("Gemma3TextConfig", dict(
        _DECODER, num_hidden_layers=3, sliding_window=8, layer_types=["sliding_attention", "full_attention",
        "sliding_attention"], query_pre_attn_scalar=16, use_bidirectional_attention=True)),
    "gemma3_text": ("Gemma3TextConfig", dict(
        _DECODER, num_hidden_layers=3, sliding_window=6, layer_types=["sliding_attention", "full_attention",
        "sliding_attention"], query_pre_attn_scalar=16)),
    "llama": ("LlamaConfig", _DECODER),
    # Llama 3's RoPE scaling: mlx-lm precomputes its frequencies when the model is built.
    "llama3": ("LlamaConfig", dict(_DECODER, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16))),
    "mistral": ("MistralConfig", dict(_DECODER, sliding_window=None)),
    "phi3": ("Phi3Config", dict(_DECODER, head_dim=None)),
    "gemma": ("GemmaConfig", _DECODER),
    # mlx-lm's gemma2 has no sliding window (4096 in the real models): keep it past the test lengths.
    "gemma2": ("Gemma2Config", dict(_DECODER, sliding_window=128, query_pre_attn_scalar=16)),
    "qwen2": ("Qwen2Config", _DECODER),
    "glm4": ("Glm4Config", dict(_DECODER, partial_rotary_factor=0.5, attention_bias=True)),
    "qwen3": ("Qwen3Config", dict(_DECODER, tie_word_embeddings=True)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(_DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                         decoder_sparse_step=1)),
}


def tiny_transformer(kind: str, tokenizer_src: Path, work: Path, *, causal_lm: bool = False) -> Path:
    """A small random-weight model of `kind` (a TINY key), with the tokenizer of `tokenizer_src`.

    Saved as transformers saves it: the base model, or with `causal_lm` the *ForCausalLM checkpoint with
    its `model.` prefix and LM head. Norm weights get noise, so a wrong norm formula cannot hide.
    """
    require_oracle()
    import torch
    import transformers

    torch.manual_seed(0)
    class_name, overrides = TINY[kind]
    config = getattr(transformers, class_name)(**{k: v for k, v in overrides.items() if v is not None})
    auto = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
    model = auto.from_config(config).eval()
    return save_with_noisy_norms(model, work / f"hf-{kind}{'-lm' if causal_lm else ''}", tokenizer_src)


def save_with_noisy_norms(model, out: Path, tokenizer_src: Path) -> Path:
    """Noise on every 1-D weight (norms and biases), so a wrong norm formula cannot hide; saved as transformers
    saves it, with the tokenizer of `tokenizer_src`."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(out), safe_serialization=True)
    copy_tokenizer(tokenizer_src, out)
    return out


def tiny_cross_encoder(kind: str, tokenizer_src: Path, work: Path, *, labels: int = 1, saved_by: str = "hf",
                       **config_overrides) -> Path:
    """A small random-weight *ForSequenceClassification (BERT, XLM-RoBERTa, ModernBERT, a TINY decoder), saved as
    a reranker on the Hub is: by transformers alone (`saved_by="hf"`, as ms-marco-MiniLM and bge-reranker ship), or by
    sentence-transformers 6's CrossEncoder.save (`"st"`). XLM-RoBERTa gets RoBERTa's pair template (`<s> A </s></s> B
    </s>`, every token type 0) and the tokenizer's limit inside its position table. Weights are drawn wide, so scores spread instead of sitting at sigmoid(0)."""
    require_oracle()
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  initializer_range=0.3, num_labels=labels, **config_overrides)
    if kind == "bert":
        config = transformers.BertConfig(max_position_embeddings=128, **common)
    elif kind == "xlm-roberta":
        config = transformers.XLMRobertaConfig(max_position_embeddings=130, pad_token_id=1, type_vocab_size=1,
                                               layer_norm_eps=1e-5, **common)
    elif kind in TINY:  # ModernBERT, or a decoder's *ForSequenceClassification (its `score` head)
        class_name, overrides = TINY[kind]
        config = getattr(transformers, class_name)(**{k: v for k, v in {**overrides, **common}.items()
                                                      if v is not None})
    else:
        raise ValueError(kind)
    model = transformers.AutoModelForSequenceClassification.from_config(config).eval()
    out = work / f"ce-{kind}-{labels}-{saved_by}"
    model.save_pretrained(str(out), safe_serialization=True)
    copy_tokenizer(tokenizer_src, out)
    if kind == "xlm-roberta":
        tokenizer = json.loads((out / "tokenizer.json").read_text())
        tokenizer["post_processor"] = {"type": "RobertaProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101],
                                       "trim_offsets": True, "add_prefix_space": False}
        (out / "tokenizer.json").write_text(json.dumps(tokenizer))
        # tokenizer.json as written (transformers' BertTokenizer would frame pairs its own way), and the real models'
        # limit (512 of 514 positions): sentence-transformers would take all 130 positions
        settings = json.loads((out / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(json.dumps(
            {**settings, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128}))
    if saved_by == "st":
        from sentence_transformers import CrossEncoder

        CrossEncoder(str(out), device="cpu").save(str(out))
    return out


def tiny_sparse_encoder(kind: str, tokenizer_src: Path, work: Path, *, strategy: str = "max",
                        activation: str = "relu", bare: bool = False) -> Path:
    """A small random-weight *ForMaskedLM (BERT, DistilBERT or XLM-RoBERTa) saved as sentence-transformers 6's
    SparseEncoder saves a SPLADE model (MLMTransformer + SpladePooling), or `bare`, as transformers alone saves it."""
    require_oracle()
    import torch
    import transformers
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    torch.manual_seed(0)
    common = dict(vocab_size=30522, initializer_range=0.2)
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=128, **common)
    elif kind == "distilbert":
        config = transformers.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                               max_position_embeddings=128, **common)
    elif kind == "xlm-roberta":
        config = transformers.XLMRobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=128, max_position_embeddings=130, pad_token_id=1,
                                               type_vocab_size=1, layer_norm_eps=1e-5, **common)
    else:
        raise ValueError(kind)
    hf = work / f"mlm-{kind}"
    mlm = transformers.AutoModelForMaskedLM.from_config(config).eval()
    with torch.no_grad():  # as in a trained SPLADE model, <1% of the vocabulary active per token (random: half)
        mlm.get_output_embeddings().bias.fill_(-4.0)
    mlm.save_pretrained(str(hf), safe_serialization=True)
    copy_tokenizer(tokenizer_src, hf)
    if bare:
        return hf
    out = work / f"splade-{kind}-{strategy}-{activation}"
    modules = [MLMTransformer(str(hf), max_seq_length=128), SpladePooling(strategy, activation)]
    SparseEncoder(modules=modules, device="cpu").save(str(out))
    return out


def tiny_colbert(tokenizer_src: Path, work: Path, saved_as: str, *, attend: bool = False,
                 backbone: str = "bert") -> Path:
    """A late-interaction (ColBERT) model on a tiny random encoder (`backbone`: "bert", or "modernbert" for
    GTE-ModernColBERT's shape), a 24-wide projection, saved the three ways they ship: by sentence-transformers 6's
    MultiVectorEncoder (`"st"`, [Q]/[D] text prompts, a punctuation skiplist), as PyLate 3 saves (`"pylate"`:
    [unused0]/[unused1] markers and its knobs in config_sentence_transformers.json, a Transformer and a Dense in
    modules.json), or as Stanford-NLP ColBERT ships (`"stanford"`: an HF_ColBERT config.json, the projection as
    `linear.weight` beside the `bert.` weights, artifact.metadata). Queries expand to 32 tokens; `attend`: the
    encoder attends to the expansion tokens too."""
    require_oracle()
    import string

    import torch
    from safetensors.torch import load_file, save_file

    encoder = tiny_encoder("bert", tokenizer_src, work) if backbone == "bert" else tiny_transformer(backbone,
                                                                                                      tokenizer_src, work)
    torch.manual_seed(1)
    hidden = json.loads((encoder / "config.json").read_text())["hidden_size"]
    weight = torch.randn(24, hidden) / hidden ** 0.5
    out = work / f"colbert-{backbone}-{saved_as}-{'attend' if attend else 'skip'}"
    if saved_as == "st":
        from sentence_transformers import MultiVectorEncoder
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.base.modules.dense import Dense
        from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

        transformer = Transformer(str(encoder), document_length=40,
                                  query_expansion={"strategy": "fixed", "attend": attend, "length": 32})
        dense = Dense(hidden, 24, bias=False, activation_function=torch.nn.Identity(), init_weight=weight,
                      module_input_name="token_embeddings")
        modules = [transformer, dense, MultiVectorMask(skiplist_words=list(string.punctuation)),
                   Normalize(module_input_name="token_embeddings")]
        MultiVectorEncoder(modules=modules, prompts={"query": "[Q] ", "document": "[D] "}, device="cpu").save(str(out))
        return out
    shutil.copytree(encoder, out)
    if saved_as == "pylate":
        (out / "1_Dense").mkdir()
        save_file({"linear.weight": weight.contiguous()}, str(out / "1_Dense" / "model.safetensors"))
        (out / "1_Dense" / "config.json").write_text(json.dumps(
            {"in_features": hidden, "out_features": 24, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"}))
        (out / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 39, "do_lower_case": False}))
        (out / "config_sentence_transformers.json").write_text(json.dumps({
            "model_type": "ColBERT", "query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 32,
            "document_length": 40, "attend_to_expansion_tokens": attend, "similarity_fn_name": "MaxSim",
            "prompts": {}, "default_prompt_name": None}))
        return out
    weights = {f"bert.{k}": v for k, v in load_file(str(out / "model.safetensors")).items()}
    save_file({**weights, "linear.weight": weight.contiguous()}, str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "architectures": ["HF_ColBERT"]}))
    (out / "artifact.metadata").write_text(json.dumps({
        "query_maxlen": 32, "doc_maxlen": 40, "dim": 24, "mask_punctuation": True, "attend_to_mask_tokens": attend,
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "similarity": "cosine"}))
    return out


def tiny_inference_free_splade(tokenizer_src: Path, work: Path) -> Path:
    """An inference-free SPLADE model as sentence-transformers 6 saves one (OpenSearch's doc-only encoders): a Router
    whose documents go through a tiny masked-LM and SpladePooling (max of log1p(log1p(relu))) and whose queries are
    weighed token by token from a random IDF table (SparseStaticEmbedding), each in its own folder."""
    require_oracle()
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SparseStaticEmbedding, SpladePooling

    mlm = MLMTransformer(str(tiny_sparse_encoder("bert", tokenizer_src, work, bare=True)), max_seq_length=128)
    torch.manual_seed(2)
    idf = SparseStaticEmbedding(tokenizer=mlm.tokenizer, weight=torch.rand(mlm.tokenizer.vocab_size) * 3, frozen=True)
    router = Router.for_query_document(query_modules=[idf],
                                       document_modules=[mlm, SpladePooling("max", "log1p_relu")])
    out = work / "inference-free-splade"
    SparseEncoder(modules=[router], device="cpu").save(str(out))
    return out
