"""Encoders other than the default, each against its PyTorch reference: CLS pooling, XLM-RoBERTa, quantized."""

import json
import shutil

import pytest

from embedder import EmbeddingEngine
from reference import cosine, st_reference
from tiny_models import save_sentence_transformer, tiny_encoder

TEXTS = [
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "中文句子，还有一些日本語のテキスト。",
    "Emoji 🎉 and accents: café, naïve, e\u0301",
    "def f(x):\n    return x ** 2  # code",
    "long " * 200,
]


@pytest.mark.parametrize(
    "kind, pooling, normalize, dense",
    [("bert", "cls", False, None), ("xlm-roberta", "mean", True, None), ("bert", "max", True, 32),
     ("distilbert", "mean", True, None), ("mpnet", "mean", True, None)],
)
def test_tiny_encoder_matches_pytorch(tmp_path, minilm_path, kind, pooling, normalize, dense):
    hf = tiny_encoder(kind, minilm_path, tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", pooling, normalize, max_seq_length=64, dense_out=dense)
    expected, tokens = st_reference(path, TEXTS)
    engine = EmbeddingEngine(str(path), batch_tokens=128)
    got = engine.embed(TEXTS)
    assert got.shape == expected.shape
    assert cosine(got, expected).min() >= 0.9999
    assert engine.tokens_per_text(TEXTS) == tokens
    info = engine.info()
    assert info["pooling"] == pooling and info["normalize"] == normalize
    engine.unload()


def test_attention_scores_in_the_hundreds_still_match(tmp_path, minilm_path):
    """Weights 50x BERT's usual scale give attention scores in the hundreds, past exp's float32 range."""
    hf = tiny_encoder("bert", minilm_path, tmp_path, initializer_range=1.0)
    path = save_sentence_transformer(hf, tmp_path / "st", "mean", True, max_seq_length=64)
    expected, _ = st_reference(path, TEXTS)
    engine = EmbeddingEngine(str(path), batch_tokens=128)
    got = engine.embed(TEXTS)
    assert cosine(got, expected).min() >= 0.9999
    engine.unload()


def test_xlm_roberta_limit_excludes_padding_offset(tmp_path, minilm_path):
    hf = tiny_encoder("xlm-roberta", minilm_path, tmp_path)
    engine = EmbeddingEngine(str(hf))  # bare transformers checkpoint: mean pooling, no normalization
    assert engine.max_length == 128
    assert engine.tokens_per_text(["word " * 500]) == [128]
    engine.unload()


def test_mlx_community_style_quantized_checkpoint(tmp_path, minilm_path):
    """A checkpoint as mlx-embeddings writes it: its own key names, separate q/k/v, 8-bit affine."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_embeddings.models import bert as mlxe_bert

    config = json.loads((minilm_path / "config.json").read_text())
    model = mlxe_bert.Model(mlxe_bert.ModelArgs.from_dict(config))
    model.load_weights(list(model.sanitize(mx.load(str(minilm_path / "model.safetensors"))).items()), strict=False)
    nn.quantize(model, group_size=64, bits=8)
    out = tmp_path / "minilm-4bit"
    shutil.copytree(minilm_path, out, ignore=shutil.ignore_patterns("*.safetensors"))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps({**config, "quantization": {"group_size": 64, "bits": 8}}))

    quantized = EmbeddingEngine(str(out))
    full = EmbeddingEngine(str(minilm_path))
    texts = TEXTS[1:5]
    assert quantized.info()["quantization"] == {"group_size": 64, "bits": 8}
    assert cosine(quantized.embed(texts), full.embed(texts)).min() >= 0.995
    assert (out / "model.safetensors").stat().st_size < (minilm_path / "model.safetensors").stat().st_size / 3
    # No packed 16-bit kernel takes a quantized checkpoint, on any CPU: float16 runs MLX's generic kernels, and the
    # warning points to float32 rather than to a dtype that would refuse this checkpoint.
    half = EmbeddingEngine(str(out), dtype="float16")
    with pytest.warns(RuntimeWarning, match=r"\(a quantized checkpoint\).*float32 is the fastest dtype for it$"):
        got = half.embed(texts[:1])
    assert cosine(got, quantized.embed(texts[:1])).min() >= 0.999
    half.unload()
    quantized.unload()
    full.unload()
