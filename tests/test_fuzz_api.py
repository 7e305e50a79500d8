"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) on a real `embed serve` over loopback: no case
gets a 5xx, every refusal is in OpenAI's error shape (TEI's on its routes), and a good request is answered correctly
after each one."""

from collections.abc import Iterator

import httpx
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from test_server import API_KEY, assert_close, running_server
from tiny_models import tiny_colbert, tiny_cross_encoder, tiny_sparse_encoder

schemathesis = pytest.importorskip("schemathesis")
pytestmark = pytest.mark.slow

from embedder import DEFAULT_MODEL, EmbeddingEngine  # noqa: E402

TEI_PATHS = ("/embed", "/embed_all", "/embed_sparse", "/", "/decode", "/info", "/similarity", "/predict", "/rerank",
             "/tokenize")  # /rerank and /tokenize: TEI's requests


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server("--embedding-model", DEFAULT_MODEL, "--api-key", API_KEY, "--max-inputs", "64") as url:
        yield url


def test_no_case_breaks_the_server(server: str, engine: EmbeddingEngine) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    operations = api_operations(server)
    assert {op.label for op in operations} >= {"POST /v1/embeddings", "GET /v1/models"}
    want = engine.embed(["still right", "after that"])

    with httpx.Client(timeout=120) as client:
        def still_right() -> None:
            good = client.post(f"{server}/v1/embeddings", json={"input": ["still right", "after that"]},
                               headers=headers)
            assert good.status_code == 200, good.text
            assert_close([d["embedding"] for d in good.json()["data"]], want)

        fuzz(server, operations, headers, still_right)


# The routes of the other model kinds, fuzzed on a server whose models are a ColBERT model (the default), a
# classifier and a SPLADE encoder.
KIND_PATHS = ("/", "/predict", "/classify", "/v1/classify", "/embed_sparse", "/embed_all", "/pooling", "/rerank",
              "/score")


def test_no_case_breaks_a_multi_vector_a_classifier_and_a_sparse_model(tmp_path_factory, minilm_path) -> None:
    work = tmp_path_factory.mktemp("fuzz")
    colbert = tiny_colbert(minilm_path, work, "st")
    classifier = tiny_cross_encoder("bert", minilm_path, work, labels=3)
    splade = tiny_sparse_encoder("bert", minilm_path, work)
    with (running_server(f"colbert={colbert}", f"sentiment={classifier}", f"splade={splade}", "--max-inputs",
                         "64") as url, httpx.Client(timeout=120) as client):
        operations = [op for op in api_operations(url) if op.path in KIND_PATHS and op.method == "post"]
        assert {op.path for op in operations} >= {"/predict", "/embed_sparse", "/classify", "/embed_all"}
        first = {path: client.post(f"{url}{path}", json={"inputs": "still right", "model": model}).json()
                 for path, model in (("/embed_sparse", "splade"), ("/embed_all", "colbert"))}

        def still_right() -> None:
            for path, model in (("/embed_sparse", "splade"), ("/embed_all", "colbert")):
                good = client.post(f"{url}{path}", json={"inputs": "still right", "model": model})
                assert good.status_code == 200 and good.json() == first[path], good.text
            predicted = client.post(f"{url}/predict", json={"inputs": "still right", "model": "sentiment"})
            assert predicted.status_code == 200

        fuzz(url, operations, {}, still_right)


def api_operations(server: str) -> list:
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(server: str, operations: list, headers: dict, still_right) -> None:
    """Each operation's generated cases: no 5xx, every refusal in OpenAI's error shape (TEI's on its routes), and
    a good request still answered right after each one. The cases share one keep-alive session, as a real client
    does: no case may leave its connection unusable for the next."""
    session = requests.Session()
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=60 if operation.method == "post" else 10, deadline=None,
                  suppress_health_check=list(HealthCheck))
        def no_5xx_then_still_right(case) -> None:
            response = case.call(base_url=server, session=session, headers=headers, timeout=120)
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400:
                body = response.json()
                if set(body) == {"error", "error_type"}:
                    assert operation.path in TEI_PATHS and body["error"], response.text
                else:
                    assert set(body) == {"error"} and body["error"]["message"], response.text
            still_right()

        no_5xx_then_still_right()
