"""The engine on the real all-MiniLM-L6-v2: exact to sentence-transformers, and its batching invariants."""

import json
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embedder import DEFAULT_MODEL, EmbeddingEngine
from embedder.native import fastmath, kernels
from embedder.errors import InputError, InputTooLong, ModelError, ModelNotFound
from reference import cosine

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def golden():
    texts = json.loads((GOLDEN / "minilm_texts.json").read_text(encoding="utf-8"))
    data = np.load(GOLDEN / "minilm_golden.npz")
    return texts, data["embeddings"], data["tokens"]


def test_vectors_equal_sentence_transformers(engine, golden):
    texts, expected, _ = golden
    assert len(texts) >= 100
    got = engine.embed(texts)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert cosine(got, expected).min() >= 0.9999


@pytest.mark.parametrize("mlx_kernels", ["native-padded", "mlx-compiled", "mlx-builtin"])
def test_vectors_equal_sentence_transformers_on_mlx_kernels_alone(engine, golden, monkeypatch, mlx_kernels):
    """Where our C++ kernels do not build (or nothing native does: no g++, macOS), MLX's own are exact too; and
    our kernels on padded batches, as they run where a batch cannot be packed (`fastmath.PackedTokens`)."""
    if mlx_kernels == "native-padded":
        monkeypatch.setattr(fastmath.PackedTokens, "of", classmethod(lambda cls, *args: None))
    elif mlx_kernels == "mlx-compiled":
        monkeypatch.setattr(kernels, "available", lambda: False)
    else:
        monkeypatch.setattr(fastmath, "_fast_path", lambda x: False)
    texts, expected, _ = golden
    assert cosine(engine.embed(texts), expected).min() >= 0.9999


def test_token_counts_exact(engine, golden):
    texts, _, tokens = golden
    assert engine.tokens_per_text(texts) == tokens.tolist()
    assert engine.count_tokens(texts) == int(tokens.sum())


def test_default_model_resolves_offline_to_packaged_weights(minilm_path):
    e = EmbeddingEngine()
    assert e.model_id == DEFAULT_MODEL
    assert e.dim == 384 and e.max_length == 256
    assert Path(e.info()["path"]) == minilm_path
    e.unload()


def test_batch_equals_single_and_duplicates(engine, golden):
    texts = golden[0][:12]
    batch = engine.embed(texts + [texts[3]])
    singles = np.stack([engine.embed([t])[0] for t in texts])
    assert cosine(batch[:12], singles).min() >= 0.99999
    assert cosine(batch[12:], batch[3:4])[0] >= 0.99999


def test_order_kept_under_shuffled_lengths_and_budgets(minilm_path, golden):
    texts = list(golden[0][:30]) + sorted(golden[0][:-1], key=len)[-2:]
    random.Random(0).shuffle(texts)
    small = EmbeddingEngine(str(minilm_path), batch_tokens=256, max_batch_rows=3)
    large = EmbeddingEngine(str(minilm_path), batch_tokens=65536)
    a, b = small.embed(texts), large.embed(texts)
    assert cosine(a, b).min() >= 0.99999
    index = {t: i for i, t in enumerate(golden[0])}
    expected = golden[1][[index[t] for t in texts]]
    assert cosine(a, expected).min() >= 0.9999
    assert small.stats()["batches"] > large.stats()["batches"]
    small.unload()
    large.unload()


def test_dimensions_truncate_then_normalize(engine):
    full = engine.embed(["Matryoshka dolls nest inside each other."])
    cut = engine.embed(["Matryoshka dolls nest inside each other."], dimensions=64)
    assert cut.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64])
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    raw = engine.embed(["Matryoshka dolls nest inside each other."], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3


def test_embed_tokens_as_given(engine):
    text = ["Token ids go in exactly as given."]
    ids = engine.tokenize(text)
    np.testing.assert_allclose(engine.embed_tokens(ids), engine.embed(text), atol=1e-6)
    without_specials = [ids[0][1:-1]]
    assert cosine(engine.embed_tokens(without_specials), engine.embed(text))[0] < 0.9999


def test_concurrent_submits_batch_together(engine, golden):
    texts = golden[0][:40]
    expected = engine.embed(texts)
    ids = engine.tokenize(texts)
    with ThreadPoolExecutor(16) as pool:
        futures = list(pool.map(lambda i: engine.submit([ids[i]]), range(len(ids))))
        got = np.concatenate([f.result() for f in futures])
    assert cosine(got, expected).min() >= 0.99999


def test_lanes_share_jobs_and_agree(minilm_path, golden):
    """Small batches spread over three lanes: every job, split across lanes, comes back whole and in order."""
    texts, expected, _ = golden
    one = EmbeddingEngine(str(minilm_path), lanes=1, batch_tokens=256, max_batch_rows=4)
    three = EmbeddingEngine(str(minilm_path), lanes=3, batch_tokens=256, max_batch_rows=4)
    assert three.lanes == 3
    ids = three.tokenize(texts)
    jobs = [ids[i:i + 7] for i in range(0, len(ids), 7)]
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(three.submit, jobs))
        got = np.concatenate([f.result() for f in futures])
    wall = time.perf_counter() - start
    assert cosine(got, expected).min() >= 0.9999
    assert cosine(got, one.embed(texts)).min() >= 0.99999
    stats = three.stats()
    assert stats["rows"] == len(texts) and stats["tokens"] == sum(map(len, ids)) and stats["queue_depth"] == 0
    assert stats["batches"] >= len(texts) / 4
    assert 0 < stats["busy_seconds"] <= wall
    one.unload()
    three.unload()


@pytest.mark.parametrize("settings, param", [
    ({"lanes": 0}, "lanes"), ({"batch_tokens": -1}, "batch_tokens"), ({"max_length": 1.5}, "max_length"),
    ({"max_batch_rows": True}, "max_batch_rows"), ({"dtype": "int4"}, "dtype"), ({"model": ""}, "model"),
])
def test_engine_options_are_checked_once_where_they_are_made(minilm_path, settings, param):
    """EngineOptions refuses bad settings at construction, for every front alike: the engine, the batch job."""
    from embedder.io.pipeline import EmbedOptions, check_options
    from embedder.options import EngineOptions

    with pytest.raises(InputError) as refused:
        EmbeddingEngine(**{"model": str(minilm_path), **settings})
    assert refused.value.param == param
    with pytest.raises(InputError):
        EngineOptions(**settings)
    job = {k: v for k, v in settings.items() if k in ("lanes", "batch_tokens", "max_length")}
    if job:
        with pytest.raises(InputError) as refused:
            check_options(EmbedOptions(inputs=("x.txt",), **job))
        assert refused.value.param == param


def test_an_engine_is_built_from_one_options_object(minilm_path):
    from embedder.options import EngineOptions

    options = EngineOptions(model=str(minilm_path), max_length=16, batch_tokens=256, lanes=1, normalize=False)
    engine = EmbeddingEngine(options=options)
    assert engine.options is options and engine.max_length == 16 and engine.lanes == 1
    assert not np.isclose(np.linalg.norm(engine.embed(["not normalized"])), 1.0)
    engine.unload()


def test_bad_token_ids_and_dimensions(engine):
    with pytest.raises(InputError, match="input 1"):
        engine.embed_tokens([[101, 102], [101, 10**9]])
    with pytest.raises(InputError, match="input 0"):
        engine.embed_tokens([[]])
    with pytest.raises(InputError, match="dimensions"):
        engine.embed(["x"], dimensions=385)


def test_a_lone_surrogate_is_placed_in_the_callers_own_text(engine):
    """With a prompt (given, or a model's named one) prepended, the error still counts the caller's characters."""
    for prompt in (None, "query: "):
        with pytest.raises(InputError, match="input 1 holds a lone UTF-16 surrogate at character 2,"):
            engine.tokenize(["fine", "ab\ud800c"], prompt=prompt)
    assert engine.tokenize(["ab"], prompt="Query: ")[0] == engine.tokenize(["query: ab"])[0]  # lowercased alike


def test_no_truncate_raises_naming_the_input(minilm_path):
    e = EmbeddingEngine(str(minilm_path), truncate=False)
    with pytest.raises(InputTooLong, match="input 1"):
        e.tokenize(["short", "word " * 300])
    e.unload()


def test_model_errors(tmp_path, minilm_path):
    with pytest.raises(ModelNotFound):
        EmbeddingEngine("./no/such/dir").load()
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache"):
        EmbeddingEngine("nobody-here/no-such-model-xyz").load()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ModelError, match="unsupported architecture 'wav2vec2'.*bert"):
        EmbeddingEngine(str(tmp_path)).load()
    broken = tmp_path / "broken"
    shutil.copytree(minilm_path, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors")
    with pytest.raises(ModelError, match="corrupt weights"):
        EmbeddingEngine(str(broken)).load()


def test_load_unload_load_and_an_unloaded_engine_refuses_work(minilm_path):
    from embedder import EmbeddingEngine
    from embedder.errors import NotReady

    engine = EmbeddingEngine(str(minilm_path), lanes=2)
    first = engine.embed(["load, unload, load"])
    engine.unload()
    assert not engine.loaded
    with pytest.raises(NotReady, match="call load"):
        engine.embed(["refused"])
    engine.load()
    np.testing.assert_array_equal(engine.embed(["load, unload, load"]), first)
    engine.unload()


def test_a_failure_while_planning_fails_only_the_jobs_it_touches(minilm_path, monkeypatch):
    """A bug in the planner must not leave callers waiting forever: their futures fail, later work still runs."""
    from embedder import EmbeddingEngine

    engine = EmbeddingEngine(str(minilm_path), lanes=2)
    engine.load()
    ids = engine.tokenize(["planned", "and failed"])
    planner = engine._scheduler._dispatch
    monkeypatch.setattr(engine._scheduler, "_dispatch", lambda *args: (_ for _ in ()).throw(RuntimeError("planner bug")))
    with pytest.raises(RuntimeError, match="planner bug"):
        engine.submit(ids).result(timeout=60)
    monkeypatch.setattr(engine._scheduler, "_dispatch", planner)
    assert engine.submit(ids).result(timeout=60).shape == (2, engine.dim)
    engine.unload()


def test_models_whose_layers_skip_padding_plan_mixed_batches(minilm_path, tmp_path):
    """On the native CPU path a BERT-family model runs its layers on real tokens alone, so its planner prices
    padding low; a model that computes padding (a decoder here) keeps the padded cost model."""
    from tiny_models import tiny_transformer

    from embedder.batching import PACKED_PADDING_COST

    bert = EmbeddingEngine(str(minilm_path), lanes=1)
    bert.load()
    want = PACKED_PADDING_COST if kernels.available() else 1.0
    assert bert.batch_shape.padding_cost == bert._scheduler.batch_shape.padding_cost == want
    bert.unload()
    decoder = EmbeddingEngine(str(tiny_transformer("qwen3", minilm_path, tmp_path)), lanes=1)
    decoder.load()
    assert decoder.batch_shape.padding_cost == 1.0
    decoder.unload()


def test_a_given_batch_budget_never_cuts_inputs(minilm_path):
    """A speed setting must not change vectors: a budget under the model's length is refused, not used to cut
    every input at it; with max_length given as well, inputs are cut where asked."""
    with pytest.raises(InputError, match="batch_tokens 64 is under the model's maximum input length of 256"):
        EmbeddingEngine(str(minilm_path), batch_tokens=64).load()
    engine = EmbeddingEngine(str(minilm_path), batch_tokens=64, max_length=64)
    assert engine.max_length == 64
    engine.unload()
