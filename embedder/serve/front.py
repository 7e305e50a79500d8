"""What every request passes before the API's routes: the API key, the body limit, /metrics and the access log,
and a fast path for valid JSON embeddings requests past FastAPI's layers."""

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import AuthError, EmbedError
from .access_log import AccessLog
from .api import EmbeddingRequest, infinity_request
from .errors import BodyTooLarge, error_response, invalid_body
from .metrics import Metrics

log = logging.getLogger("embed.server")

INLINE_BODY_BYTES = 1 << 20  # bodies validated on the event loop; a larger one (32 MB of token ids: 4 s) in a thread

BODY_KEY = "embed.body"  # the scope key under which `Front` keeps a request's buffered body
# What --api-key guards, with POST to TEI's root "/"; /health, /ping, GET / and /metrics stay open to probes.
KEYED_PATHS = ("/v1/", "/v2/", "/rerank", "/embed", "/info", "/models", "/score", "/tokenize", "/detokenize",
               "/decode", "/similarity", "/pooling", "/predict", "/classify", "/invocations")


@dataclass
class Front:
    """What every request passes before FastAPI: the API key on the API's paths and the body size limit, and
    every response counted by path and status (embeddings requests timed) for /metrics, and logged. A JSON POST
    /v1/embeddings whose body validates is answered here, past FastAPI's routing, dependency and middleware
    layers: they were half the event loop's time on a one-text request (0.45-0.50 ms against 0.22-0.25 ms, in
    process). Any other body goes on to FastAPI, whose validation errors are the API's."""

    app: ASGIApp
    embeddings: Callable[[EmbeddingRequest, Receive], Awaitable[Response]]
    metrics: Metrics
    api_key: str | None
    max_body_bytes: int
    access_log: AccessLog | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._route(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(scope["path"], status[0], time.perf_counter() - start)
            if self.access_log is not None:
                self.access_log.write(scope, status[0])

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":  # a GET's status and headers, as TEI's router answers; the server sends no body
            scope = {**scope, "method": "GET"}
        try:
            keyed = scope["path"].startswith(KEYED_PATHS) or (scope["path"] == "/" and scope["method"] != "GET")
            if self.api_key is not None and keyed:
                self._check_key(_header(scope, b"authorization"))
            body = None
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, receive = await self._buffer(receive)
                scope = {**scope, BODY_KEY: body}  # for the error handler: a TEI request is answered in TEI's shape
        except EmbedError as exc:
            return await error_response(exc, speaks_tei(scope))(scope, receive, send)
        try:
            if body is not None and len(body) > INLINE_BODY_BYTES:
                request = await run_in_threadpool(self._embeddings_request, scope, body, True)
            else:
                request = self._embeddings_request(scope, body)
        except RequestValidationError as exc:
            return await error_response(exc)(scope, receive, send)
        if request is None:
            return await self.app(scope, receive, send)
        try:
            response = await self.embeddings(request, receive)
        except Exception as exc:  # answered as FastAPI's handlers answer; an unknown one logged with its traceback
            if not isinstance(exc, EmbedError):
                log.exception("request failed")
            response = error_response(exc)
        await response(scope, receive, send)

    @staticmethod
    def _embeddings_request(scope: Scope, body: bytes | None, final: bool = False) -> EmbeddingRequest | None:
        """The request, where this is a POST /v1/embeddings with a JSON body that validates; else None, for FastAPI
        to parse and refuse again. `final`: a body that does not validate is refused here, as FastAPI would (a large
        one, parsed off the event loop, is not parsed on it a second time)."""
        if scope["method"] != "POST" or scope["path"] not in ("/v1/embeddings", "/embeddings") or body is None:
            return None
        if _header(scope, b"content-type").partition(";")[0].strip().lower() != "application/json":
            return None
        try:
            request = EmbeddingRequest.model_validate_json(body)
            return infinity_request(request) if scope["path"] == "/embeddings" else request
        except ValidationError as exc:
            if final:
                raise invalid_body(exc) from None
            return None

    def _check_key(self, header: str) -> None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise AuthError("missing or wrong API key; send the header 'Authorization: Bearer KEY'")

    async def _buffer(self, receive: Receive) -> tuple[bytes, Receive]:
        """The whole body (chunked ones too), refused past the limit, and a `receive` that replays it to the app."""
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
        body = b"".join(chunks)
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        return body, replay


def _header(scope: Scope, name: bytes) -> str:
    return dict(scope["headers"]).get(name, b"").decode("latin-1")


# Text Embeddings Inference's alone; /rerank and /tokenize are shared.
TEI_PATHS = ("/embed", "/embed_all", "/embed_sparse", "/", "/decode", "/info", "/similarity", "/predict")


def speaks_tei(scope: Scope) -> bool:
    """Whether a request is Text Embeddings Inference's, to be answered in its error shape: its own routes, and
    /rerank with `texts`, /tokenize with `inputs`, /invocations with either (`Front` keeps the body it buffered in
    the scope)."""
    path = scope["path"]
    if path in TEI_PATHS:
        return True
    if path not in ("/rerank", "/tokenize", "/invocations"):
        return False
    try:
        body = json.loads(scope.get(BODY_KEY) or b"")
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if path == "/invocations":  # TEI's bodies: `inputs`, or a rerank's `texts`
        return "inputs" in body or ("texts" in body and "documents" not in body)
    return "texts" in body and "documents" not in body if path == "/rerank" else "inputs" in body
