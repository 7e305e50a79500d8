"""Sequence classification: tiny random classifiers built by the tests against transformers' text-classification
pipeline, through the engine and the real `embed serve` (TEI's /predict, vLLM's /classify)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from reference import require_oracle
from test_server import running_server
from tiny_models import tiny_cross_encoder

from embedder import EmbeddingEngine
from embedder.errors import InputError, InputTooLong

LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
LABEL_IDS = {v: int(k) for k, v in LABELS.items()}
EMBED = [sys.executable, "-m", "cli"]
# One over the 128-token window: cut, as transformers cuts it.
TEXTS = ["I loved every minute of it.", "", "The package arrived on Tuesday.", "東京の猫はよく眠ります。🐈",
         "terrible " * 200, "Worst service I have had in years."]
PAIRS = [("A man is eating.", "Someone eats."), ("word " * 150, "a short hypothesis"), ("a", "b")]

# (kind, labels, problem_type): softmax over several labels; a sigmoid for one label or multi-label; logits for
# a regression.
CLASSIFIERS = [("bert", 3, None), ("xlm-roberta", 3, "single_label_classification"), ("modernbert", 3, None),
               ("bert", 1, None), ("bert", 3, "multi_label_classification"), ("bert", 1, "regression"),
               ("qwen2", 3, None), ("llama", 1, None)]  # decoders: the `score` of each row's last token


def classifier(work, minilm_path, kind, labels, problem_type=None):
    overrides = {"problem_type": problem_type} if problem_type else {}
    if labels == 3:
        overrides |= {"id2label": {int(k): v for k, v in LABELS.items()}, "label2id": LABEL_IDS}
    folder = work / f"{kind}-{labels}-{problem_type}"
    folder.mkdir(exist_ok=True)
    return tiny_cross_encoder(kind, minilm_path, folder, labels=labels, **overrides)


def pipeline_scores(path, inputs, max_length=128) -> tuple[np.ndarray, list[str]]:
    """transformers' text-classification pipeline, every label's score in label order, with its default function;
    long inputs cut at `max_length`, as the engine cuts them."""
    require_oracle()
    import transformers

    # The decoders' tiny checkpoints carry BERT's tokenizer.json, which transformers would trade for their family's
    # own tokenizer class: the file itself is what they and embed read.
    decoder = json.loads((Path(path) / "config.json").read_text())["model_type"] in ("qwen2", "llama")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json")) if decoder \
        else None
    pipe = transformers.pipeline("text-classification", model=str(path), tokenizer=tokenizer, device="cpu",
                                 top_k=None)
    asked = [x if isinstance(x, str) else {"text": x[0], "text_pair": x[1]} for x in inputs]
    names = [pipe.model.config.id2label[i] for i in range(pipe.model.config.num_labels)]
    rows = [{p["label"]: p["score"] for p in out} for out in pipe(asked, truncation=True, max_length=max_length)]
    return np.array([[row[n] for n in names] for row in rows], np.float32), names


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("classify")


@pytest.fixture(scope="module")
def three_labels(work, minilm_path):
    return classifier(work, minilm_path, "bert", 3)


@pytest.mark.parametrize("kind,labels,problem_type", CLASSIFIERS)
def test_classify_equals_the_text_classification_pipeline(work, minilm_path, kind, labels, problem_type):
    path = classifier(work, minilm_path, kind, labels, problem_type)
    inputs = [*TEXTS, *PAIRS]
    engine = EmbeddingEngine(str(path), batch_tokens=256)  # several batches, texts and pairs mixed in each
    got = engine.classify(inputs)
    want, names = pipeline_scores(path, inputs, engine.max_length)
    assert engine.labels == tuple(names)
    engine.unload()
    assert got.shape == want.shape == (len(inputs), labels)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert want.std() > 0.01  # the scores really differ, so a wrong pair or token type cannot hide


def test_raw_scores_are_the_logits_and_errors_name_the_input(three_labels):
    engine = EmbeddingEngine(str(three_labels), long_input="error")
    probs, logits = engine.classify(PAIRS[:1] + TEXTS[:1]), engine.classify(PAIRS[:1] + TEXTS[:1], raw=True)
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-6)
    with pytest.raises(InputTooLong, match="^input 2 has 203 tokens, more than the model's maximum of 128"):
        engine.classify(["short", ("a", "b"), "terrible " * 201])
    with pytest.raises(InputError, match="^input 1 is neither a text nor a pair of texts"):
        engine.classify(["short", ("a", "b", "c")])
    engine.unload()


def test_an_embedding_model_has_no_labels(engine):
    with pytest.raises(InputError, match="is an embedding model, with no labels to classify into"):
        engine.classify(["a text"])


# ---- the batch job -------------------------------------------------------------------------------------------


def test_embed_with_a_classifier_writes_labels(tmp_path, three_labels):
    """`embed FILE -m CLASSIFIER`: each record's best label, its score and every label's, as Parquet and JSONL;
    an empty text kept by --on-empty zero has no label."""
    texts = [TEXTS[0], TEXTS[2], "", TEXTS[5]]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t, "key": f"r{i}"}) + "\n" for i, t in enumerate(texts)))
    engine = EmbeddingEngine(str(three_labels))
    want = engine.classify([t for t in texts if t])
    args = [str(source), "-m", str(three_labels), "--id-field", "key", "--on-empty", "zero"]
    done = subprocess.run([*EMBED, *args, "-o", str(tmp_path / "out.parquet")], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "label", "score", "scores", "tokens"]
    assert json.loads(table.schema.metadata[b"labels"]) == list(LABELS.values())
    kept = [0, 1, 3]
    np.testing.assert_allclose(np.array(table["scores"].to_pylist())[kept], want, atol=1e-5)
    assert table["label"].to_pylist() == [LABELS[str(int(np.argmax(r)))] if i in kept else ""
                                          for i, r in enumerate(np.array(table["scores"].to_pylist()))]
    np.testing.assert_allclose(np.array(table["score"].to_pylist())[kept], want.max(1), atol=1e-5)
    assert table["id"].to_pylist() == ["r0", "r1", "r2", "r3"] and table["tokens"].to_pylist()[2] == 0
    lines = subprocess.run([*EMBED, *args], capture_output=True, timeout=120).stdout.decode().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"id", "label", "score", "scores", "tokens"} and first["label"] == table["label"][0].as_py()
    for flags, message in ((["--precision", "binary"], "--precision binary does not apply"),
                           (["--dimensions", "2"], "dimensions does not apply")):
        refused = subprocess.run([*EMBED, *args, *flags], capture_output=True, timeout=120)
        assert refused.returncode == 2 and message in refused.stderr.decode(), refused.stderr
    engine.unload()


# ---- the server ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(three_labels):
    import httpx

    with running_server(f"sentiment={three_labels}", "all-MiniLM-L6-v2") as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_tei_predict_single_pair_and_batch(http, three_labels):
    inputs = [TEXTS[0], PAIRS[0], TEXTS[2]]
    want, names = pipeline_scores(three_labels, inputs)

    def as_scores(predictions):
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True)  # best first, as TEI
        return [dict((p["label"], p["score"]) for p in predictions)[n] for n in names]

    one = http.post("/predict", json={"inputs": TEXTS[0]})
    assert one.status_code == 200, one.text
    np.testing.assert_allclose(as_scores(one.json()), want[0], atol=1e-5)
    pair = http.post("/predict", json={"inputs": list(PAIRS[0])})
    np.testing.assert_allclose(as_scores(pair.json()), want[1], atol=1e-5)
    batch = http.post("/predict", json={"inputs": [[TEXTS[0]], list(PAIRS[0]), [TEXTS[2]]]})
    assert len(batch.json()) == 3
    np.testing.assert_allclose([as_scores(p) for p in batch.json()], want, atol=1e-5)
    raw = http.post("/predict", json={"inputs": TEXTS[0], "raw_scores": True}).json()
    logits = np.array([dict((p["label"], p["score"]) for p in raw)[n] for n in names])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), want[0], atol=1e-5)


def test_a_classifier_served_alone_answers_on_teis_root_and_info(three_labels, monkeypatch):
    """TEI routes its root to /predict when it serves a classifier: huggingface_hub's InferenceClient posts there."""
    import httpx
    import huggingface_hub
    from huggingface_hub import InferenceClient

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # a loopback server, not the Hub
    want, names = pipeline_scores(three_labels, [TEXTS[0]])
    with running_server(str(three_labels)) as url:
        info = httpx.get(f"{url}/info", timeout=30).json()
        top = InferenceClient(base_url=url).text_classification(TEXTS[0])
        rerank = httpx.post(url, json={"query": "q", "texts": ["a"]}, timeout=30)
    assert info["model_type"] == {"classifier": {"id2label": LABELS, "label2id": LABEL_IDS}}
    assert top.label == names[int(np.argmax(want[0]))] and abs(top.score - want[0].max()) < 1e-5
    assert rerank.status_code == 422 and "gives 3 scores per pair" in rerank.json()["error"]


def test_tei_predict_scores_as_tei_whatever_the_problem_type(work, minilm_path):
    """TEI's /predict ignores problem_type: a one-label regression head gets a sigmoid there, its logit on
    vLLM's /classify (as transformers' pipeline)."""
    import httpx

    path = classifier(work, minilm_path, "bert", 1, "regression")
    engine = EmbeddingEngine(str(path))
    logit = engine.classify([TEXTS[0]], raw=True)[0, 0]
    engine.unload()
    with running_server(str(path)) as url:
        predicted = httpx.post(f"{url}/predict", json={"inputs": TEXTS[0]}, timeout=60).json()
        classified = httpx.post(f"{url}/classify", json={"input": TEXTS[0]}, timeout=60).json()
    assert abs(predicted[0]["score"] - 1 / (1 + np.exp(-logit))) < 1e-5
    assert abs(classified["data"][0]["probs"][0] - logit) < 1e-5


@pytest.mark.parametrize("body, status, message", [
    ({"inputs": []}, 422, "'inputs'"),
    ({"inputs": ["a", "b", "c"]}, 422, "'inputs'"),
    ({"inputs": [["a"], ["a", "b", "c"]]}, 422, "'inputs'"),
    ({"inputs": [["a"], 3]}, 422, "'inputs'"),
    ({"inputs": "terrible " * 200, "truncate": False}, 422, "has 202 tokens, more than the model's maximum of 128"),
    ({"inputs": [["a", "b"], ["c"]], "truncation_direction": "Left"}, 422,
     "input 0 is a pair: keeping the last tokens applies to single texts"),
    ({"inputs": "a", "model": "all-MiniLM-L6-v2"}, 422, "is an embedding model, with no labels"),
    ({"inputs": ["a", "\ud800"]}, 422, "lone UTF-16 surrogate"),
])
def test_tei_predict_refuses_in_tei_shape(http, body, status, message):
    reply = http.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
    assert reply.status_code == status and message in reply.json()["error"], reply.text
    assert set(reply.json()) == {"error", "error_type"}


def test_infinity_classify(http, three_labels):
    """infinity's /classify, as its client sends it (`raw_scores` always, its default model name): each text's
    score per label, best first, as transformers' pipeline scores them; its logits with raw_scores."""
    texts = [TEXTS[0], TEXTS[2]]
    want, names = pipeline_scores(three_labels, texts)
    body = {"input": texts, "model": "default/not-specified", "raw_scores": False}
    reply = http.post("/classify", json=body).json()
    assert reply["object"] == "classify" and reply["id"].startswith("infinity-") and reply["model"] == "sentiment"
    for row, scores in zip(reply["data"], want):
        assert [p["label"] for p in row] == [names[k] for k in np.argsort(-scores, kind="stable")]
        np.testing.assert_allclose(sorted((p["score"] for p in row), reverse=True), sorted(scores, reverse=True),
                                   atol=1e-5)
    raw = http.post("/classify", json=body | {"raw_scores": True}).json()["data"][0]
    logits = np.array([dict((p["label"], p["score"]) for p in raw)[n] for n in names])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), want[0], atol=1e-5)


def scipy_softmax(logits: list[float]) -> np.ndarray:
    exp = np.exp(np.array(logits) - max(logits))
    return exp / exp.sum()


@pytest.mark.parametrize("path", ["/classify", "/v1/classify"])
def test_vllm_classify(http, three_labels, path):
    texts = [TEXTS[0], TEXTS[2], TEXTS[5]]
    want, names = pipeline_scores(three_labels, texts)
    reply = http.post(path, json={"model": "sentiment", "input": texts})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list" and body["model"] == "sentiment" and body["id"].startswith("classify-")
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["num_classes"] == 3 and d["label"] == names[int(np.argmax(d["probs"]))] for d in body["data"])
    np.testing.assert_allclose([d["probs"] for d in body["data"]], want, atol=1e-5)
    engine = EmbeddingEngine(str(three_labels))
    assert body["usage"]["prompt_tokens"] == sum(map(len, engine.tokenize(texts)))
    engine.unload()
    logits = http.post(path, json={"model": "sentiment", "input": texts, "use_activation": False}).json()["data"]
    np.testing.assert_allclose([scipy_softmax(d["probs"]) for d in logits], want, atol=1e-5)  # vLLM's: the logits
    last = http.post(path, json={"input": "terrible " * 200, "truncate_prompt_tokens": 10}).json()
    assert last["usage"]["prompt_tokens"] == 10
    pooled = http.post("/pooling", json={"model": "sentiment", "input": texts}).json()  # a classifier's own task
    np.testing.assert_allclose([d["data"] for d in pooled["data"]], want, atol=1e-5)
    ids = EmbeddingEngine(str(three_labels)).tokenize(texts)  # vLLM's token ids: the texts' own scores
    by_ids = http.post(path, json={"model": "sentiment", "input": ids}).json()
    np.testing.assert_allclose([d["probs"] for d in by_ids["data"]], want, atol=1e-5)
    assert by_ids["usage"]["prompt_tokens"] == sum(map(len, ids))
    one = http.post(path, json={"model": "sentiment", "input": ids[0]}).json()["data"]
    np.testing.assert_allclose([d["probs"] for d in one], want[:1], atol=1e-5)
    for bad, message in (({"input": []}, "'input' must hold 1 to"), ({"input": ["a", 1]}, "not a mix"),
                         ({"input": [[101, 10_000_000]]}, "outside this model's vocabulary")):
        refused = http.post(path, json=bad)
        assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
