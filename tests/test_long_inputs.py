"""Long inputs embedded whole (`long_input="chunk"`): windows framed by the model's special tokens, their vectors
averaged by token count, checked against sentence-transformers run window by window; in the engine, the CLI and
the server."""

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import cosine, require_oracle
from test_cli import COMMAND, ENV
from test_server import running_server

from embedder import EmbeddingEngine
from embedder.errors import InputError
from embedder.long_inputs import Windows, combine

GOLDEN = Path(__file__).parent / "golden" / "minilm_texts.json"
LONG = " ".join(t for t in json.loads(GOLDEN.read_text(encoding="utf-8")) if t.isascii())  # ~2,000 words


def test_windows_frame_every_piece_and_share_the_overlap():
    windows = Windows(prefix=(101,), suffix=(102,), max_length=6, overlap=1)
    assert windows.split([101, 1, 2, 3, 102]) == [[101, 1, 2, 3, 102]]  # fits: as it is
    assert windows.split([101, *range(1, 10), 102]) == [[101, 1, 2, 3, 4, 102], [101, 4, 5, 6, 7, 102],
                                                          [101, 7, 8, 9, 102]]
    assert windows.split(list(range(1, 9))) == [[1, 2, 3, 4, 5, 6], [6, 7, 8]]  # raw ids: no frame to keep
    with pytest.raises(InputError, match="overlap"):
        Windows(prefix=(101,), suffix=(102,), max_length=6, overlap=4)
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], np.float32)
    np.testing.assert_allclose(combine(vectors, [2, 1], [3, 1, 5]), [[0.75, 0.25], [2.0, 2.0]])


def st_chunked(path, text: str, overlap: int) -> tuple[np.ndarray, int]:
    """The reference: sentence-transformers' own modules on each window (no normalization), token-weighted mean,
    then normalized; and the tokens embedded."""
    require_oracle()
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    tokenizer, limit = st.tokenizer, st.max_seq_length
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    width, start, windows = limit - 2, 0, []
    while True:
        windows.append([tokenizer.cls_token_id, *ids[start:start + width], tokenizer.sep_token_id])
        if start + width >= len(ids):
            break
        start += width - overlap
    pooled = []
    with torch.no_grad():
        for window in windows:
            features = {"input_ids": torch.tensor([window]), "attention_mask": torch.ones(1, len(window), dtype=torch.long)}
            for module in list(st)[:2]:  # Transformer, Pooling: the vector before Normalize
                features = module(features)
            pooled.append(features["sentence_embedding"][0].numpy())
    mean = combine(np.stack(pooled), [len(windows)], [len(w) for w in windows])[0]
    return mean / np.linalg.norm(mean), sum(map(len, windows))


@pytest.mark.parametrize("overlap", [0, 32])
def test_the_engine_chunks_as_sentence_transformers_window_by_window(minilm_path, overlap):
    want, tokens = st_chunked(minilm_path, LONG, overlap)
    engine = EmbeddingEngine(str(minilm_path), long_input="chunk", chunk_overlap=overlap)
    got = engine.embed([LONG, "a short one"])
    assert tokens > 3 * engine.max_length  # several windows
    assert cosine(got[:1], want[None])[0] >= 0.9999
    np.testing.assert_allclose(got[1], EmbeddingEngine(str(minilm_path)).embed(["a short one"])[0], atol=1e-6)
    assert engine.embedded_tokens(engine.tokenize([LONG]))[0] == tokens
    truncated = EmbeddingEngine(str(minilm_path)).embed([LONG])[0]
    assert cosine(got[:1], truncated[None])[0] < 0.99  # the whole text, not its first 256 tokens
    engine.unload()


def test_the_cli_chunks_and_counts_every_token_embedded(minilm_path, tmp_path):
    want, tokens = st_chunked(minilm_path, LONG, 0)
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"text": LONG}) + "\n" + json.dumps({"text": "short"}) + "\n")
    out = tmp_path / "out.parquet"
    done = subprocess.run([*COMMAND, str(source), "-o", str(out), "-m", str(minilm_path), "--long-input", "chunk"],
                          env=ENV, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    got = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    assert cosine(got[:1], want[None])[0] >= 0.9999
    assert table["tokens"].to_pylist()[0] == tokens
    assert table.schema.metadata[b"long_input"] == b"chunk"  # the file says its vectors are windows' means


def test_the_server_chunks_texts_and_over_long_token_ids_alike(minilm_path):
    want, tokens = st_chunked(minilm_path, LONG, 0)
    engine = EmbeddingEngine(str(minilm_path), long_input="chunk")
    ids = engine.tokenize([LONG])[0]
    with running_server("--embedding-model", str(minilm_path), "--long-input", "chunk") as url:
        for body in ({"input": LONG}, {"input": [ids]}):
            reply = httpx.post(f"{url}/v1/embeddings", json=body, timeout=120).json()
            assert cosine(np.array([reply["data"][0]["embedding"]]), want[None])[0] >= 0.9999
            assert reply["usage"]["prompt_tokens"] == tokens
    engine.unload()


def test_chunk_options_that_cannot_work_are_refused(minilm_path):
    from embedder.errors import InputError

    with pytest.raises(InputError, match="chunk_overlap is for long_input chunk"):
        EmbeddingEngine(str(minilm_path), chunk_overlap=10)
    with pytest.raises(InputError, match="max_length 2 leaves no room for text between this model's 2 special"):
        EmbeddingEngine(str(minilm_path), long_input="chunk", max_length=2).load()
