"""ModernBERT and EmbeddingGemma (bidirectional Gemma 3 + Dense), tiny and random, against sentence-transformers."""

import contextlib

import numpy as np
import pytest

from embedder import EmbeddingEngine
from reference import assert_one_call_on_real_tokens, cosine, require_oracle, st_reference
from tiny_models import copy_tokenizer, save_sentence_transformer, tiny_transformer

# Very short next to long texts, so every batch pads, and the long ones cross the tiny attention windows.
TEXTS = [
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "中文句子，还有一些日本語のテキスト。",
    "Emoji 🎉 and accents: café, naïve, e\u0301",
    "ok",
    "def f(x):\n    return x ** 2  # code",
    "long " * 200,
    "A middling sentence about the weather, which was mild and grey all week long.",
]
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def check(path, prompt_name=None, **engine_options):
    expected, tokens = st_reference(path, TEXTS, prompt_name)
    engine = EmbeddingEngine(str(path), batch_tokens=256, **engine_options)
    prompt = engine.resolve_prompt(prompt_name=prompt_name) if prompt_name else None
    got = engine.embed(TEXTS, prompt=prompt)
    singles = np.concatenate([engine.embed([t], prompt=prompt) for t in TEXTS[:4]])
    assert got.shape == expected.shape
    assert cosine(got, expected).min() >= 0.999
    assert cosine(singles, got[:4]).min() >= 0.9999  # padding changes nothing
    assert engine.tokens_per_text(TEXTS, prompt=prompt) == tokens
    return engine


def test_modernbert(tmp_path, minilm_path):
    hf = tiny_transformer("modernbert", minilm_path, tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    engine = check(path)
    assert engine.info()["architecture"] == "modernbert"
    engine.unload()


def test_modernbert_layers_run_in_one_native_call_on_real_tokens(tmp_path, minilm_path, monkeypatch):
    """ModernBERT's pre-LN layers, local (windowed, their own RoPE base) and global, run as BERT's do on the native
    CPU path: a batch's layers in one native call over its real tokens alone, with the reference's vectors."""
    hf = tiny_transformer("modernbert", minilm_path, tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    assert_one_call_on_real_tokens(path, TEXTS, monkeypatch, batch_tokens=256)


def test_modernbert_masked_lm_checkpoint_gives_hidden_states(tmp_path, minilm_path):
    """mlx-embeddings returns per-token logits for MaskedLM configs; we take the encoder's states."""
    require_oracle()
    from transformers import AutoModel, ModernBertForMaskedLM

    hf = tiny_transformer("modernbert", minilm_path, tmp_path)
    mlm = ModernBertForMaskedLM(AutoModel.from_pretrained(str(hf)).config)
    mlm.model.load_state_dict(AutoModel.from_pretrained(str(hf)).state_dict())
    mlm.save_pretrained(str(tmp_path / "mlm"))
    copy_tokenizer(hf, tmp_path / "mlm")
    base, masked = EmbeddingEngine(str(hf)), EmbeddingEngine(str(tmp_path / "mlm"))
    assert masked.dim == base.dim == 64
    assert cosine(masked.embed(TEXTS), base.embed(TEXTS)).min() >= 0.9999
    base.unload()
    masked.unload()


def test_embeddinggemma(tmp_path, minilm_path):
    hf = tiny_transformer("embeddinggemma", minilm_path, tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64, linear=(128, 48),
                                     prompts=GEMMA_PROMPTS)
    for prompt_name in (None, "query", "document"):
        engine = check(path, prompt_name)
    info = engine.info()
    assert info["dim"] == 48 and info["dense_layers"] == 2 and info["prompts"] == GEMMA_PROMPTS
    engine.unload()


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_embeddinggemma_bfloat16_stays_finite(tmp_path, minilm_path, dtype):
    """Gemma's activations overflow float16, not bfloat16: in our bfloat16 kernel on a CPU with AVX512-BF16, or
    MLX's generic bfloat16 (~30x float32's time, with a warning) elsewhere."""
    from embedder.native import kernels

    hf = tiny_transformer("embeddinggemma", minilm_path, tmp_path)
    full, half = EmbeddingEngine(str(hf)), EmbeddingEngine(str(hf), dtype=dtype)
    slow = pytest.warns(RuntimeWarning, match="on the CPU runs MLX's generic kernels")
    with contextlib.nullcontext() if kernels.bf16_available() else slow:
        got = half.embed(TEXTS[:4])
    assert cosine(got, full.embed(TEXTS[:4])).min() >= 0.99
    full.unload()
    half.unload()
