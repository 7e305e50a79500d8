"""The OpenAI-compatible HTTP front: /v1/embeddings, /v1/rerank, /v1/models, /health and /metrics over served
engines."""

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..engine import EmbeddingEngine, ranked
from ..errors import AuthError, EmbedError, InputError, Overloaded
from ..images import DATA_URI_PREFIX, decode_data_uri
from ..quantize import CALIBRATED, quantize
from .api import (
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    Inputs,
    ModelCard,
    ModelList,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    Usage,
    check_token_ids,
    encode_vectors,
    parse_input,
    parse_rerank,
)
from .errors import BodyTooLarge, error_response
from .metrics import Metrics
from .registry import DEFAULT_NAME, ModelRegistry, ServedModel

CLIENT_CLOSED = 499  # nginx's status for "the client hung up first": seen only in /metrics


INLINE_TOKENIZE_CHARS = 4096  # tokenized on the event loop (tens of microseconds); longer inputs in a thread

@dataclass(frozen=True)
class ServerOptions:
    """Access and limits of one server; 2048 inputs per request is OpenAI's own limit."""

    api_key: str | None = None
    max_inputs: int = 2048
    max_body_bytes: int = 32 * 1024 * 1024
    max_queue: int = 8192  # inputs admitted and not yet answered, over all models; beyond it, 429

    def __post_init__(self) -> None:
        if self.max_queue < self.max_inputs:
            raise InputError(f"--max-queue ({self.max_queue}) must be at least --max-inputs ({self.max_inputs})")


@dataclass
class Admission:
    """Counts admitted inputs so a flood gets 429 at the door instead of an unbounded engine queue."""

    limit: int
    in_flight: int = 0

    @contextlib.contextmanager
    def admit(self, inputs: int) -> Iterator[None]:
        if self.in_flight + inputs > self.limit:
            raise Overloaded(f"the server has {self.in_flight} inputs in flight (limit {self.limit}); retry shortly")
        self.in_flight += inputs
        try:
            yield
        finally:
            self.in_flight -= inputs


def create_app(registry: ModelRegistry, options: ServerOptions = ServerOptions()) -> FastAPI:
    """The app for uvicorn; its lifespan preloads in the background, so /health says 503 until ready."""
    metrics, admission = Metrics(), Admission(options.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm_up = asyncio.create_task(asyncio.to_thread(registry.warm_up))
        yield
        await warm_up
        registry.close()

    errors = {status: {"model": ErrorBody} for status in (400, 401, 404, 413, 429, 503)}
    app = FastAPI(title="embed", lifespan=lifespan, responses=errors)
    for exc_type in (EmbedError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, _handle)
    app.add_middleware(Gate, api_key=options.api_key, max_body_bytes=options.max_body_bytes)
    app.add_middleware(Recorder, metrics=metrics)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        served = registry.resolve(body.model)
        inputs = parse_input(body.input, options.max_inputs)
        if body.precision in CALIBRATED and len(inputs) < 2:
            raise InputError(f"precision {body.precision} takes each dimension's range from the request's own "
                             "vectors, so it needs at least two inputs", "precision")
        if body.embed_dtype not in (None, "float32") and body.precision not in (None, "float32"):
            raise InputError(f"embed_dtype {body.embed_dtype} is for float vectors; precision {body.precision} "
                             "already sets the values' type", "embed_dtype")
        with admission.admit(len(inputs)):
            engine = await _engine(registry, served)
            dimensions = engine.check_dimensions(body.dimensions)
            if _characters(inputs) <= INLINE_TOKENIZE_CHARS:
                token_ids = _token_ids(engine, inputs, body)
            else:
                token_ids = await run_in_threadpool(_token_ids, engine, inputs, body)
            skip = engine.prompt_skip(body.prompt, body.prompt_name) if inputs.texts else 0
            future = engine.submit(token_ids, dimensions=dimensions, skip=skip)
            vectors = await _result(future, request)
        if vectors is None:
            return Response(status_code=CLIENT_CLOSED)
        tokens = sum(engine.embedded_tokens(token_ids))
        metrics.observe_embedding(len(token_ids), tokens)
        vectors = quantize(vectors, body.precision or "float32")
        encoded = encode_vectors(vectors, body.encoding_format, body.embed_dtype, body.endianness)
        data = [Embedding(index=i, embedding=e) for i, e in enumerate(encoded)]
        reply = EmbeddingResponse(data=data, model=_client_name(served, body.model),
                                  usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
        return Response(reply.model_dump_json(), media_type="application/json")

    async def rerank(body: RerankRequest, request: Request) -> Response:
        """The documents ranked against the query, best first: a cross-encoder's scores, or an embedding model's
        cosine similarities."""
        served = registry.resolve(body.model)
        documents = parse_rerank(body, options.max_inputs)
        with admission.admit(len(documents)):
            engine = await _engine(registry, served)
            engine.check_rankable()
            future, tokens = await run_in_threadpool(engine.submit_scores, [body.query] * len(documents), documents)
            scores = await _result(future, request)
        if scores is None:
            return Response(status_code=CLIENT_CLOSED)
        results = [RerankResult(index=i, relevance_score=score,
                                document=RerankDocument(text=documents[i]) if body.return_documents else None)
                   for i, score in ranked(scores, body.top_n or None)]
        reply = RerankResponse(id=f"rerank-{secrets.token_hex(12)}", model=_client_name(served, body.model),
                               usage=Usage(prompt_tokens=tokens, total_tokens=tokens), results=results)
        return Response(reply.model_dump_json(exclude_none=True), media_type="application/json")

    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):  # vLLM's three spellings; Jina's, Cohere's v1 and v2
        app.post(path, response_model=RerankResponse)(rerank)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        names = [name for m in registry.models for name in m.served_names or (m.name,)]
        return ModelList(data=[ModelCard(id=name, created=registry.created) for name in names])

    @app.get("/health")
    async def health() -> dict:
        registry.check_ready()
        return {"status": "ok", "models": [m.public_name for m in registry.models],
                "loaded": [m.public_name for m in registry.loaded()]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        engines = {m.public_name: m.engine.stats() for m in registry.loaded()}
        return metrics.render(admission.in_flight, engines)

    return app


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def _engine(registry: ModelRegistry, served: ServedModel) -> EmbeddingEngine:
    """The served model's engine, loaded. A thread hop costs more than a loaded engine's lookup or a short text's
    tokens: only loading hops."""
    return served.engine if served.engine.loaded else await run_in_threadpool(registry.loaded_engine, served)


def _client_name(served: ServedModel, asked: str | None) -> str:
    """The model name to answer with: the one the client used, or the served model's public name."""
    return served.public_name if asked in (None, DEFAULT_NAME) else asked


def _characters(inputs: Inputs) -> int:
    return sum(map(len, inputs.texts)) if inputs.texts is not None else sum(map(len, inputs.token_ids))


def _token_ids(engine: EmbeddingEngine, inputs: Inputs, body: EmbeddingRequest) -> list:
    """Texts are tokenized (with special tokens and any prompt), and an image model's data-URI images decoded;
    token ids are checked against the vocabulary and cut; `truncate_prompt_tokens` keeps the last N of texts or
    ids."""
    keep_last = engine.max_length if body.truncate_prompt_tokens == -1 else body.truncate_prompt_tokens
    if inputs.texts is not None:
        images = engine.model.images is not None  # an image model takes images as data URIs among the texts
        items = [decode_data_uri(t, f"input {i}") if images and t.startswith(DATA_URI_PREFIX) else t
                 for i, t in enumerate(inputs.texts)]
        return engine.input_rows(items, prompt=body.prompt, prompt_name=body.prompt_name, keep_last=keep_last)
    if keep_last is not None:
        engine.check_keep_last(keep_last)
        inputs = Inputs(token_ids=[ids[-keep_last:] for ids in inputs.token_ids])
    return check_token_ids(inputs.token_ids, engine.vocab_size, engine.max_length,
                           engine.options.long_input_mode)


async def _result(future: Future, request: Request) -> np.ndarray | None:
    """The engine's vectors, or None if the client hung up first; then its queued rows are dropped."""
    waiter = asyncio.wrap_future(future)
    hangup = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({waiter, hangup}, return_when=asyncio.FIRST_COMPLETED)
        return waiter.result() if waiter in done else None
    finally:
        hangup.cancel()
        waiter.cancel()  # cancels the engine's future too, unless it already runs


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


KEYED_PATHS = ("/v1/", "/v2/", "/rerank")  # what --api-key guards; /health and /metrics stay open to probes


@dataclass
class Gate:
    """What a request must pass before its body is parsed: the API key on the API's paths, and the body size
    limit."""

    app: ASGIApp
    api_key: str | None
    max_body_bytes: int

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            if self.api_key is not None and scope["path"].startswith(KEYED_PATHS):
                self._check_key(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1"))
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffer(receive)
        except EmbedError as exc:
            return await error_response(exc)(scope, receive, send)
        await self.app(scope, receive, send)

    def _check_key(self, header: str) -> None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise AuthError("missing or wrong API key; send the header 'Authorization: Bearer KEY'")

    async def _buffer(self, receive: Receive) -> Receive:
        """Read the whole body (chunked ones too), keeping at most the limit; then replay it to the app."""
        chunks, size, message = [], 0, {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size <= self.max_body_bytes:
                chunks.append(message.get("body", b""))
        if size > self.max_body_bytes:
            raise BodyTooLarge(f"the request body is {size} bytes; this server accepts at most {self.max_body_bytes}")
        pending: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return replay


@dataclass
class Recorder:
    """Counts every response by path and status, and times embeddings requests, for /metrics."""

    app: ASGIApp
    metrics: Metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(scope["path"], status[0], time.perf_counter() - start)
