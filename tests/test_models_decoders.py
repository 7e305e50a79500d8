"""Causal LMs through mlx-lm as embedding models, and Qwen3-Embedding, against PyTorch on tiny random weights."""

import json

import numpy as np
import pytest

from embedder import EmbeddingEngine
from reference import cosine, require_oracle
from test_models_encoders import TEXTS, check
from tiny_models import save_sentence_transformer, tiny_transformer

QWEN3_PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"}


def torch_reference(hf_dir, ids: list[list[int]], pooling: str) -> np.ndarray:
    """transformers' forward on LEFT-padded rows (embed pads on the right): pooling over real tokens only."""
    require_oracle()
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(hf_dir)).eval()
    L = max(map(len, ids))
    input_ids = torch.tensor([[0] * (L - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in ids])
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float().numpy()
    m = mask.numpy()[..., None]
    first = np.array([L - len(r) for r in ids])
    return {
        "mean": (hidden * m).sum(1) / m.sum(1),
        "cls": hidden[np.arange(len(ids)), first],
        "last": hidden[:, -1],
    }[pooling]


@pytest.mark.parametrize(
    "kind, pooling, causal_lm",
    [
        ("llama", "mean", True),
        ("llama3", "last", True),
        ("mistral", "last", False),
        ("phi3", "mean", True),
        ("gemma", "cls", False),
        ("gemma2", "mean", True),
        ("gemma3_text", "last", True),
        ("qwen2", "mean", False),
        ("glm4", "last", True),
        ("qwen3_moe", "last", True),
    ],
)
def test_causal_lm_as_embedding_model(tmp_path, minilm_path, kind, pooling, causal_lm):
    hf = tiny_transformer(kind, minilm_path, tmp_path, causal_lm=causal_lm)
    engine = EmbeddingEngine(str(hf), pooling=pooling, batch_tokens=512, max_length=64)
    ids = engine.tokenize(TEXTS)
    expected = torch_reference(hf, ids, pooling)
    got = engine.embed(TEXTS)
    assert cosine(got, expected).min() >= 0.999
    singles = np.concatenate([engine.embed([t]) for t in TEXTS[:3]])
    assert cosine(singles, got[:3]).min() >= 0.9999
    assert engine.info()["pooling"] == {"last": "lasttoken"}.get(pooling, pooling)
    engine.unload()


def test_bare_causal_lm_defaults_to_mean(tmp_path, minilm_path):
    hf = tiny_transformer("llama", minilm_path, tmp_path, causal_lm=True)
    engine = EmbeddingEngine(str(hf), max_length=64)
    info = engine.info()
    assert (info["pooling"], info["normalize"], info["dim"]) == ("mean", False, 64)
    engine.unload()


def test_qwen3_embedding(tmp_path, minilm_path):
    """Last-token pooling, left padding in the reference, the instruct prompt for queries only."""
    hf = tiny_transformer("qwen3", minilm_path, tmp_path)
    path = save_sentence_transformer(hf, tmp_path / "st", "lasttoken", True, max_seq_length=64,
                                     prompts=QWEN3_PROMPTS, padding_side="left")
    assert json.loads((path / "tokenizer_config.json").read_text())["padding_side"] == "left"
    for prompt_name in (None, "query"):
        engine = check(path, prompt_name)
    assert engine.info()["pooling"] == "lasttoken"
    engine.unload()
