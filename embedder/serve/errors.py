"""The server's one error table: every exception a request can raise, as a status and an OpenAI error body, or
on Text Embeddings Inference's own routes as TEI answers (`{"error": ..., "error_type": ...}`, its statuses)."""

import logging
from dataclasses import dataclass

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..errors import (
    AuthError,
    EmbedError,
    EmptyInput,
    InputError,
    InputTooLong,
    ModelError,
    ModelNotFound,
    NotReady,
    Overloaded,
)
from .registry import ModelPinned

log = logging.getLogger("embed.server")


class BodyTooLarge(InputError):
    """The request body is over the server's size limit; refused before it is parsed."""


class UnreadableBody(InputError):
    """The request body is not a JSON object; TEI's JSON extractor answers it 400, where a field's value is 422."""


@dataclass(frozen=True)
class ErrorKind:
    status: int | None  # None: the exception carries its own (Starlette's HTTPException: 404, 405)
    type: str
    code: str | None
    param: str | None = None  # when the exception names none itself
    tei: tuple[int | None, str] = (None, "Validation")  # TEI's status (None: as above) and error_type


# Subclasses before their parents: the first match wins.
# TEI's statuses since its 1.9.0 (before it, Validation was 413): Validation and Tokenizer 422, as its JSON
# extractor answers a field's bad value, and 400 a body that is not JSON; Empty 400, Overloaded 429, Backend 424,
# Unhealthy 503; a body over its limit 413.
ERRORS: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (BodyTooLarge, ErrorKind(413, "invalid_request_error", "body_too_large", tei=(413, "Validation"))),
    (UnreadableBody, ErrorKind(400, "invalid_request_error", "invalid_input", tei=(400, "Validation"))),
    (InputTooLong, ErrorKind(400, "invalid_request_error", "input_too_long", tei=(422, "Validation"))),
    (EmptyInput, ErrorKind(400, "invalid_request_error", "invalid_input", tei=(400, "Empty"))),
    (InputError, ErrorKind(400, "invalid_request_error", "invalid_input", tei=(422, "Validation"))),
    (ModelPinned, ErrorKind(400, "invalid_request_error", "model_not_served", "model")),
    (ModelNotFound, ErrorKind(404, "invalid_request_error", "model_not_found", "model")),
    (AuthError, ErrorKind(401, "authentication_error", "invalid_api_key")),
    (Overloaded, ErrorKind(429, "rate_limit_error", "overloaded", tei=(429, "Overloaded"))),
    (NotReady, ErrorKind(503, "server_error", "not_ready", tei=(503, "Unhealthy"))),
    (ModelError, ErrorKind(500, "server_error", "model_error", tei=(424, "Backend"))),
    (EmbedError, ErrorKind(500, "server_error", "embed_error", tei=(424, "Backend"))),
    (RequestValidationError, ErrorKind(400, "invalid_request_error", "invalid_value",  # as OpenAI and vLLM
                                       tei=(422, "Validation"))),
    (HTTPException, ErrorKind(None, "invalid_request_error", None)),
    (Exception, ErrorKind(500, "server_error", "internal_error", tei=(500, "Backend"))),
)

RETRY_AFTER_SECONDS = 1
MAX_SHOWN = 80  # characters of a refused value quoted back
FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's 400 where json.loads raised


def error_response(exc: Exception, tei: bool = False) -> JSONResponse:
    """The answer to `exc`, OpenAI-shaped or, with `tei`, as Text Embeddings Inference answers on its own routes;
    handlers and middleware only raise, this is the one place that maps."""
    exc = _malformed_json(exc)
    kind = next(kind for cls, kind in ERRORS if isinstance(exc, cls))
    message, param = _describe(exc)
    if kind.status == 500 and isinstance(exc, EmbedError):  # unknown ones reach uvicorn's log with a traceback
        log.error("request failed: %s: %s", type(exc).__name__, exc)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(exc, Overloaded) else None
    status = kind.status or exc.status_code
    if tei:
        return JSONResponse({"error": message, "error_type": kind.tei[1]}, status_code=kind.tei[0] or status,
                            headers=headers)
    body = {"message": message, "type": kind.type, "param": param or kind.param, "code": kind.code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def invalid_body(exc: ValidationError) -> RequestValidationError:
    """A request model's validation errors as FastAPI reports a body's, located under "body"."""
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])


def _malformed_json(exc: Exception) -> Exception:
    """A body that is not a JSON object at all is a 400, as OpenAI answers, not a field-level 422."""
    if isinstance(exc, HTTPException) and exc.status_code == 400 and exc.detail == FASTAPI_UNREADABLE_BODY:
        return UnreadableBody("the request body cannot be read as JSON: send it as UTF-8 and uncompressed, with no "
                              "integer of over 4,300 digits and no nesting past 1,000 levels")
    if isinstance(exc, RequestValidationError):
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", error["msg"])
            return UnreadableBody(f"the request body is not valid JSON: {reason}")
        if tuple(error["loc"]) == ("body",):
            return UnreadableBody("the request body must be a JSON object, sent with 'Content-Type: application/json'")
    return exc


def _describe(exc: Exception) -> tuple[str, str | None]:
    """Message and offending parameter; an unknown exception's text stays in the log, not the response."""
    if isinstance(exc, RequestValidationError):  # a union's members each report: "string or list" reads right
        errors = exc.errors()
        param = str(errors[0]["loc"][1]) if len(errors[0]["loc"]) > 1 else None
        reasons = " or ".join(dict.fromkeys(e["msg"] for e in errors if e["loc"][1:2] == errors[0]["loc"][1:2]))
        given = repr(errors[0].get("input"))  # as pydantic says it (vLLM's tests read the type); a long one cut
        given = given if len(given) <= MAX_SHOWN else given[:MAX_SHOWN] + "..."
        reasons += f" [type={errors[0]['type']}, input_value={given}]"
        return (f"'{param}': {reasons}" if param else reasons), param
    if isinstance(exc, HTTPException):
        return str(exc.detail), None
    if isinstance(exc, EmbedError):
        return str(exc), exc.param
    return "internal server error; the details are in the server's log", None
