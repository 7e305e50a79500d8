"""Bad requests get their 4xx in OpenAI's error shape, and the server answers correctly right after each."""

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from test_server import API_KEY, running_server

from embedder import DEFAULT_MODEL

MAX_INPUTS, MAX_QUEUE, MAX_BODY = 8, 12, 65536
LONG_TEXT = "a rather long sentence about nothing " * 60  # past 256 tokens
NEAR_MAX_TEXT = "a sentence " * 120  # under 256 tokens

BATTERY = [  # (case, request body or raw bytes, status, param)
    ("malformed json", b'{"input": "hi"', 400, None),
    ("not an object", b'["hi"]', 400, None),
    ("missing input", {"model": DEFAULT_MODEL}, 400, "input"),
    ("input null", {"input": None}, 400, "input"),
    ("lone surrogate", b'{"input": "a\\ud800b"}', 400, "input"),
    ("lone low surrogate in a list", b'{"input": ["fine", "\\udfff"]}', 400, "input"),
    ("lone surrogate in the prompt", b'{"input": "hi", "prompt": "\\ud800 "}', 400, "prompt"),
    ("nested 10,000 deep", b'{"input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, None),
    ("input a number", {"input": 5}, 400, "input"),
    ("input an object", {"input": {"text": "hi"}}, 400, "input"),
    ("model a number", {"input": "hi", "model": 3}, 400, "model"),
    ("empty string", {"input": ""}, 400, "input"),
    ("empty string in list", {"input": ["hi", ""]}, 400, "input"),
    ("empty list", {"input": []}, 400, "input"),
    ("empty token list", {"input": [[101, 102], []]}, 400, "input"),
    ("mixed strings and ids", {"input": ["hi", 7592]}, 400, "input"),
    ("mixed ids and lists", {"input": [101, [102]]}, 400, "input"),
    ("booleans as ids", {"input": [True, False]}, 400, "input"),
    ("float ids", {"input": [[101.0, 102.0]]}, 400, "input"),
    ("negative id", {"input": [101, -1, 102]}, 400, "input"),
    ("out-of-vocabulary id", {"input": [[101, 10_000_000, 102]]}, 400, "input"),
    ("other model (pinned)", {"input": "hi", "model": "text-embedding-3-small"}, 400, "model"),
    ("over-long text (--no-truncate)", {"input": ["hi", LONG_TEXT]}, 400, "input"),
    ("over-long ids (--no-truncate)", {"input": [list(range(1000, 1300))]}, 400, "input"),
    ("too many inputs", {"input": ["hi"] * (MAX_INPUTS + 1)}, 400, "input"),
    ("huge body", {"input": ["x" * 1000] * 80}, 413, None),
    ("bad encoding_format", {"input": "hi", "encoding_format": "int8"}, 400, "encoding_format"),
    ("dimensions as a string", {"input": "hi", "dimensions": "8"}, 400, "dimensions"),
    ("dimensions zero", {"input": "hi", "dimensions": 0}, 400, "dimensions"),
    ("dimensions negative", {"input": "hi", "dimensions": -3}, 400, "dimensions"),
    ("dimensions over the model's", {"input": "hi", "dimensions": 385}, 400, "dimensions"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    limits = ["--max-inputs", str(MAX_INPUTS), "--max-queue", str(MAX_QUEUE), "--max-body-bytes", str(MAX_BODY)]
    with running_server("--embedding-model", DEFAULT_MODEL, "--no-truncate", "--api-key", API_KEY, *limits) as url:
        yield url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


def assert_openai_error(reply: httpx.Response, status: int, param: str | None) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(reply.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] and error["param"] == param
    return error


def assert_serves(http: httpx.Client) -> None:
    reply = http.post("/v1/embeddings", json={"input": ["still here", "and well"]})
    assert reply.status_code == 200, reply.text
    assert [len(d["embedding"]) for d in reply.json()["data"]] == [384, 384]


@pytest.mark.parametrize("case,body,status,param", BATTERY, ids=[case for case, *_ in BATTERY])
def test_bad_request(http: httpx.Client, case: str, body: dict | bytes, status: int, param: str | None) -> None:
    if isinstance(body, bytes):
        reply = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    else:
        reply = http.post("/v1/embeddings", json=body)
    assert_openai_error(reply, status, param)
    assert_serves(http)


@pytest.mark.parametrize("body", [b'{"input": "a\xffb"}', b'{"input": "hi", "dimensions": ' + b"9" * 5000 + b"}"],
                         ids=["not UTF-8", "an integer of 5,000 digits"])
def test_bodies_no_json_parser_reads_are_named(http: httpx.Client, body: bytes) -> None:
    reply = http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    error = assert_openai_error(reply, 400, None)
    assert "cannot be read as JSON" in error["message"] and error["code"] == "invalid_input"
    assert_serves(http)


def test_unknown_prompt_name_names_the_field(http: httpx.Client) -> None:
    error = assert_openai_error(http.post("/v1/embeddings", json={"input": "hi", "prompt_name": "nope"}), 400,
                                "prompt_name")
    assert "unknown prompt_name 'nope'" in error["message"]


def test_over_long_input_names_its_index(http: httpx.Client) -> None:
    error = assert_openai_error(http.post("/v1/embeddings", json={"input": ["hi", LONG_TEXT]}), 400, "input")
    assert error["code"] == "input_too_long" and "input 1" in error["message"]


def test_unknown_routes_and_methods_keep_the_shape(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing-here"), 404, None)
    assert_openai_error(http.get("/v1/embeddings"), 405, None)
    assert_serves(http)


def test_full_queue_is_429_with_retry_after(server: str, http: httpx.Client) -> None:
    """Eight heavy requests at once, each 8 of the queue's 12 inputs: while one runs, the others are refused.
    Nothing depends on the machine's speed: each round either sees a 429 or every request was served."""
    heavy = {"input": [f"{i} {NEAR_MAX_TEXT}" for i in range(MAX_INPUTS)]}

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server, headers=headers, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json=heavy) for _ in range(8)))

    refused = []
    for _ in range(5):
        replies = asyncio.run(burst())
        assert {r.status_code for r in replies} <= {200, 429}, [r.text for r in replies]
        refused = [r for r in replies if r.status_code == 429]
        if refused:
            break
    assert refused, "five bursts of eight heavy requests never filled the queue"
    assert_openai_error(refused[0], 429, None)
    assert refused[0].headers["retry-after"] == "1"
    assert_serves(http)


def test_client_hanging_up_drops_its_work(server: str, http: httpx.Client) -> None:
    heavy = {"input": [f"{i} {NEAR_MAX_TEXT}" for i in range(MAX_INPUTS)]}
    for _ in range(5):  # a client that gives up after 10 ms; a machine that answers first is given another try
        try:
            http.post("/v1/embeddings", json=heavy, timeout=0.01)
        except httpx.ReadTimeout:
            break
    else:
        pytest.skip("the server answered 2,000 tokens within 10 ms five times: no hang-up to observe")
    for _ in range(600):
        metrics = http.get("/metrics").text
        if _in_flight(metrics) == 0 and 'status="499"' in metrics:
            break
        time.sleep(0.05)
    assert _in_flight(metrics) == 0 and 'status="499"' in metrics
    assert_serves(http)


def _in_flight(metrics: httpx.Response | str) -> int:
    text = metrics if isinstance(metrics, str) else metrics.text
    return int(re.search(r"^embed_in_flight_inputs (\d+)$", text, re.M).group(1))
