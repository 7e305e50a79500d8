"""The T5 encoder (sentence-t5, gtr-t5), tiny and random, against sentence-transformers: relu and gated-gelu
feed-forward blocks, a tiny SentencePiece tokenizer as T5's (pad 0, eos 1, no BOS), mean + bias-free Dense +
Normalize as sentence-t5 ships, and a full encoder-decoder checkpoint read as its encoder."""

import json
import random

import numpy as np
import pytest
from reference import (assert_one_call_on_real_tokens, assert_packed_near_float32, cosine, needs_bf16, needs_f16,
                       needs_int8, require_oracle, st_reference)
from test_models_encoders import TEXTS as ENCODER_TEXTS
from tiny_models import save_sentence_transformer

from embedder import EmbeddingEngine

MAX_SEQ_LENGTH = 48
# Short next to long (past MAX_SEQ_LENGTH, and past the position buckets' exact range), CJK, emoji.
TEXTS = [*ENCODER_TEXTS, "kasu mibo tezela " * 12, "🎉" * 5]
CONFIG = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory):
    """A T5 tokenizer (Unigram from a SentencePiece model, `</s>` appended, 100 sentinels) of ~600 tokens."""
    require_oracle()
    import sentencepiece as spm
    from transformers import T5Tokenizer

    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghklmnprstvwzBKMST" for v in "aeiou"]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(600)]
    words += "The quick brown fox jumps over the lazy dog weather mild grey week long code return x f ( ) : # 2 * , ."\
        .split() + "café naïve 中文 句子 日本語 テキスト".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(800)]
    out = tmp_path_factory.mktemp("t5-tokenizer")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(out / "spiece"), vocab_size=500,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    tokenizer = T5Tokenizer.from_pretrained(str(out))
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert tokenizer("fox").input_ids[-1] == 1
    tokenizer.save_pretrained(str(out))
    return tokenizer


def tiny_t5(tokenizer, work, feed_forward_proj: str, *, full: bool = False):
    """A random-weight T5EncoderModel (or with `full` a T5Model: encoder and decoder) saved by transformers, norm
    weights and the relative position bias given noise so that a wrong norm or bucket cannot hide."""
    import torch
    from transformers import T5Config, T5EncoderModel, T5Model

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), feed_forward_proj=feed_forward_proj, **CONFIG)
    model = (T5Model if full else T5EncoderModel)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
            elif "relative_attention_bias" in name:
                p.normal_(0, 1.0)
    out = work / f"hf-t5-{feed_forward_proj}{'-full' if full else ''}"
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out, model


def sentence_t5(tokenizer, work, feed_forward_proj: str):
    """As sentence-t5 ships: the encoder, mean pooling, a bias-free Identity Dense (64 -> 48) and Normalize."""
    hf, _ = tiny_t5(tokenizer, work, feed_forward_proj)
    return save_sentence_transformer(hf, work / f"st-t5-{feed_forward_proj}", "mean", True,
                                     max_seq_length=MAX_SEQ_LENGTH, linear=(48,))


def test_relative_position_buckets_match_transformers():
    """Every offset the bins can tell apart, for sentence-t5's settings and a few others."""
    require_oracle()
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    from embedder.models.attention import relative_position_buckets

    for buckets, distance in ((32, 128), (32, 64), (64, 256), (16, 32)):
        length = 2 * distance + 40
        positions = torch.arange(length)
        expected = T5Attention._relative_position_bucket(positions[None, :] - positions[:, None], bidirectional=True,
                                                         num_buckets=buckets, max_distance=distance)
        assert (relative_position_buckets(length, buckets, distance) == expected.numpy()).all()


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_t5_blocks_run_in_one_native_call_on_real_tokens(tmp_path, t5_tokenizer, monkeypatch, feed_forward_proj):
    """T5's pre-norm blocks (RMS norms, the shared relative position bias, unscaled scores; ReLU, or GELU's tanh
    approximation times a second projection) run in one native call over a batch's real tokens alone."""
    assert_one_call_on_real_tokens(sentence_t5(t5_tokenizer, tmp_path, feed_forward_proj), TEXTS, monkeypatch)


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_sentence_t5_matches_sentence_transformers(tmp_path, t5_tokenizer, feed_forward_proj):
    path = sentence_t5(t5_tokenizer, tmp_path, feed_forward_proj)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "t5" and "max_position_embeddings" not in config
    expected, tokens = st_reference(path, TEXTS)
    engine = EmbeddingEngine(str(path), batch_tokens=128)  # several batches
    got = engine.embed(TEXTS)
    assert got.shape == expected.shape == (len(TEXTS), 48)
    assert np.isfinite(got).all()
    assert cosine(got, expected).min() >= 0.9999
    assert engine.tokens_per_text(TEXTS) == tokens
    assert max(tokens) == MAX_SEQ_LENGTH  # the long texts were cut, keeping their </s>
    singles = np.concatenate([engine.embed([t]) for t in TEXTS[:4]])
    assert cosine(singles, got[:4]).min() >= 0.9999  # padding changes nothing
    info = engine.info()
    assert (info["architecture"], info["dim"], info["max_length"], info["dense_layers"]) == ("t5", 48, 48, 1)
    engine.unload()


def test_full_t5_checkpoint_loads_as_its_encoder(tmp_path, t5_tokenizer):
    """A T5Model (decoder keys too) gives the vectors of the T5EncoderModel holding the same encoder weights."""
    import torch
    from safetensors import safe_open
    from transformers import T5EncoderModel

    full, model = tiny_t5(t5_tokenizer, tmp_path, "gated-gelu", full=True)
    with safe_open(str(full / "model.safetensors"), "np") as f:
        assert any(k.startswith("decoder.") for k in f.keys())
    encoder = T5EncoderModel(model.config).eval()
    encoder.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")})
    encoder.save_pretrained(str(tmp_path / "encoder"))
    t5_tokenizer.save_pretrained(str(tmp_path / "encoder"))
    ids = t5_tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**ids).last_hidden_state
    mask = ids["attention_mask"][..., None]
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()  # mean pooling, no sentence-transformers files

    engines = [EmbeddingEngine(str(p), max_length=64) for p in (full, tmp_path / "encoder")]
    got_full, got_encoder = (e.embed(TEXTS[:4]) for e in engines)
    assert cosine(got_full, expected).min() >= 0.9999
    assert cosine(got_encoder, got_full).min() >= 0.99999
    assert engines[0].info()["architecture"] == "t5" and engines[0].dim == 64
    for e in engines:
        e.unload()


def test_embed_models_describes_t5(tmp_path, t5_tokenizer):
    from typer.testing import CliRunner

    from cli.models import app

    path = sentence_t5(t5_tokenizer, tmp_path, "relu")
    result = CliRunner().invoke(app, [str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["architecture"], info["dim"], info["pooling"], info["normalize"]) == ("t5", 48, "mean", True)
    listing = CliRunner().invoke(app, ["--json"])
    assert {"t5", "mt5"} <= set(json.loads(listing.stdout)["own_encoders"])


@pytest.mark.parametrize("dtype", [pytest.param("int8", marks=needs_int8), pytest.param("float16", marks=needs_f16),
                                   pytest.param("bfloat16", marks=needs_bf16)])
@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_sentence_t5_in_packed_dtypes_stays_near_float32(tmp_path, t5_tokenizer, feed_forward_proj, dtype):
    assert_packed_near_float32(sentence_t5(t5_tokenizer, tmp_path, feed_forward_proj), TEXTS, dtype)
