"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) on a real `embed serve` over loopback: no case
gets a 5xx, every refusal is in OpenAI's error shape (TEI's on its routes), and a good request is answered correctly
after each one."""

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from test_server import API_KEY, assert_close, running_server

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
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/embeddings", "GET /v1/models"}
    want = engine.embed(["still right", "after that"])

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=60 if operation.method == "post" else 10, deadline=None,
                  suppress_health_check=list(HealthCheck))
        def no_5xx_then_still_right(case) -> None:
            response = case.call(base_url=server, headers=headers, timeout=120)
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400:  # OpenAI's error shape, or TEI's on its routes
                body = response.json()
                if set(body) == {"error", "error_type"}:
                    assert operation.path in TEI_PATHS and body["error"], response.text
                else:
                    assert set(body) == {"error"} and body["error"]["message"], response.text
            good = httpx.post(f"{server}/v1/embeddings", json={"input": ["still right", "after that"]},
                              headers=headers, timeout=120)
            assert good.status_code == 200, good.text
            assert_close([d["embedding"] for d in good.json()["data"]], want)

        no_5xx_then_still_right()
