"""The OpenAI-compatible server's routes: /v1/embeddings, /v1/rerank, /v1/models, /health and /metrics over served
engines; Text Embeddings Inference's /embed, /embed_all, /embed_sparse, /rerank, /predict, /info, /tokenize and
/decode; vLLM's /score, /classify, /tokenize and /detokenize. `front.Front` stands before them."""

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive

from ..engine import EmbeddingEngine, class_scores, ranked, split_pairs
from ..errors import EmbedError, EmptyInput, InputError, ModelNotFound, Overloaded
from ..images import DATA_URI_PREFIX, decode_data_uri
from ..pooling import normalize as l2_normalize
from ..quantize import CALIBRATED, quantize, sparse_rows
from .access_log import AccessLog
from .api import (
    BINARY_FORMATS,
    SCORE_SIDES,
    ClassificationData,
    ClassificationResponse,
    ClassifyRequest,
    CohereEmbedRequest,
    DecodeRequest,
    DetokenizeRequest,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorBody,
    Inputs,
    ModelCard,
    ModelList,
    Pooled,
    PoolingRequest,
    PoolingResponse,
    Prediction,
    PredictRequest,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    Score,
    ScoreRequest,
    ScoreResponse,
    SparseValue,
    TEIEmbedAllRequest,
    TEIEmbedRequest,
    TEIRank,
    TEISimilarityRequest,
    TEITextOptions,
    TEIToken,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
    check_pair_cuts,
    check_token_ids,
    cohere_inputs,
    cohere_prompt_name,
    encode_vectors,
    infinity_request,
    parse_input,
    parse_predict,
    parse_rerank,
    parse_score,
)
from .errors import UnreadableBody, error_response, invalid_body
from .front import Front, speaks_tei
from .metrics import Metrics
from .registry import DEFAULT_NAMES, ModelRegistry, ServedModel
from .replies import (
    binary_reply,
    cohere_reply,
    infinity_classes,
    labels_best_first,
    openai_item,
    pooled_tokens,
    tei_tokens,
    vllm_item,
    vllm_reply,
)
from .streamed import PIECE_FLOATS, compact_json, json_list, json_reply, row_items, streamed_data, streamed_json

log = logging.getLogger("embed.server")

CLIENT_CLOSED = 499  # nginx's status for "the client hung up first": seen only in /metrics


TEI_CUT = "; send 'truncate': true to cut it"  # how a refused long input could be sent instead
COHERE_CUT = "; send truncate END (or START) to cut it"
TOKENIZE_CHARS_PER_TOKEN = 250  # /tokenize's limit per text, of characters a token of the model's length (TEI's)
INLINE_TOKENIZE_CHARS = 4096  # tokenized on the event loop (tens of microseconds); longer inputs in a thread
INLINE_TEXTS = 64  # `input` lists of up to this many texts are checked on the event loop; the rest in a thread

@dataclass(frozen=True)
class ServerOptions:
    """Access and limits of one server; 2048 inputs per request is OpenAI's own limit."""

    api_key: str | None = None
    max_inputs: int = 2048
    max_body_bytes: int = 32 * 1024 * 1024
    max_queue: int = 8192  # inputs admitted and not yet answered, over all models; beyond it, 429
    access_log: bool = False  # a line per request on stdout, in uvicorn's format (`embed serve` turns uvicorn's off)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*": any), as TEI's flag; none

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


def create_app(registry: ModelRegistry, options: ServerOptions = ServerOptions()) -> ASGIApp:
    """The app for uvicorn: FastAPI behind `Front`. Its lifespan preloads in the background, so /health says 503
    until ready."""
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

    async def embed(body: EmbeddingRequest, receive: Receive, normalize: bool | None = None, field: str = "input",
                    refuse_long: str | None = None, per_token: bool = False, sparse: bool = False
                    ) -> tuple[ServedModel, Any, int] | None:
        """The served model, the request's vectors and their tokens; None if the client hung up first.
        `refuse_long`: a text over the model's length is refused with this advice, though the server would cut it
        (TEI's `truncate: false`); `per_token`: each input's token vectors (a list of arrays), not one pooled vector (a
        multi-vector model's own, a query's with prompt_name "query"); `sparse`: a SPLADE model's vectors are asked
        for (the dense routes refuse them, and a multi-vector model's)."""
        served = registry.resolve(body.model)
        given = body.input
        if isinstance(given, str) or (len(given) <= INLINE_TEXTS and all(isinstance(t, str) for t in given)):
            inputs = parse_input(given, options.max_inputs, field)
        else:  # token ids are checked one by one: millions of them would stall every other request
            inputs = await run_in_threadpool(parse_input, given, options.max_inputs, field)
        if body.precision in CALIBRATED and len(inputs) < 2:
            raise InputError(f"precision {body.precision} takes each dimension's range from the request's own "
                             "vectors, so it needs at least two inputs", "precision")
        if body.embed_dtype not in (None, "float32") and body.precision not in (None, "float32"):
            raise InputError(f"embed_dtype {body.embed_dtype} is for float vectors; precision {body.precision} "
                             "already sets the values' type", "embed_dtype")
        if body.encoding_format in BINARY_FORMATS and body.precision not in (None, "float32"):
            raise InputError(f"encoding_format {body.encoding_format} carries float values (their type set by "
                             f"embed_dtype), not precision {body.precision}'s: ask for base64", "encoding_format")
        with admission.admit(len(inputs)):
            engine = await _engine(registry, served)
            engine.check_embeds(_client_name(served, body.model))
            if engine.sparse != sparse and not per_token:
                raise InputError(f"{_client_name(served, body.model)} is a sparse (SPLADE) model, one weight per "
                                 "vocabulary entry: ask /embed_sparse for its vectors" if engine.sparse else
                                 f"{_client_name(served, body.model)} is a dense model; /embed_sparse needs a SPLADE "
                                 "model", "model")
            query = body.prompt_name == "query"
            if engine.multi_vector and not per_token:
                raise InputError(f"{_client_name(served, body.model)} is a multi-vector (ColBERT) model, a vector per "
                                 "token: ask /embed_all, or /pooling with task token_embed", "model")
            if engine.multi_vector:  # a document's prompt (its marker) unless the request names the query's
                body = body.model_copy(update={"prompt_name": engine.output_prompt_name(body.prompt, body.prompt_name)})
            if refuse_long is not None and inputs.texts is not None:
                await run_in_threadpool(_refuse_long, engine, inputs.texts, body.prompt_name, query, field,
                                        refuse_long)
            dimensions = engine.check_dimensions(body.dimensions)
            if _characters(inputs) <= INLINE_TOKENIZE_CHARS:
                token_ids = _token_ids(engine, inputs, body)
            else:
                token_ids = await run_in_threadpool(_token_ids, engine, inputs, body)
            skip = engine.prompt_skip(body.prompt, body.prompt_name) if inputs.texts else 0
            normalize = body.activation if normalize is None else normalize
            future = (engine.submit_multi_vectors(token_ids, query=query) if engine.multi_vector else
                      engine.submit_token_embeddings(token_ids) if per_token else
                      engine.submit(token_ids, dimensions=dimensions, normalize=normalize, skip=skip))
            vectors = await _result(future, receive)
        if vectors is None:
            return None
        tokens = sum(engine.embedded_tokens(token_ids, query=query))
        metrics.observe_embedding(len(token_ids), tokens)
        return served, vectors, tokens

    async def answer_embeddings(body: EmbeddingRequest, receive: Receive) -> Response:
        """The request's vectors, in its precision and encoding, and its usage; a large reply of JSON numbers
        encoded while it is sent (`streamed`)."""
        answer = await embed(body, receive)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        served, vectors, tokens = answer
        if body.encoding_format in BINARY_FORMATS:
            return binary_reply(list(vectors), body, "embd", _client_name(served, body.model), tokens)
        vectors = quantize(vectors, body.precision or "float32")
        streamed = vectors.size > PIECE_FLOATS and body.encoding_format != "base64"
        # Built without validation: the values are the engine's own, and validating each float against the
        # union of value types was half the cost of a one-text reply (81 -> 38 us for 384 floats).
        data = [] if streamed else [
            Embedding.model_construct(index=i, embedding=e)
            for i, e in enumerate(encode_vectors(vectors, body.encoding_format, body.embed_dtype, body.endianness))]
        reply = EmbeddingResponse.model_construct(id=f"embd-{secrets.token_hex(12)}", created=int(time.time()),
                                                  data=data, model=_client_name(served, body.model),
                                                  usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
        if streamed:
            return streamed_data(reply.model_dump_json(), row_items(vectors, openai_item))
        return Response(reply.model_dump_json(), media_type="application/json")

    @app.post("/v1/embeddings", response_model=EmbeddingResponse)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        """The requests `Front` passes on to FastAPI's own JSON parsing and validation (most get a 400 there)."""
        return await answer_embeddings(body, request.receive)

    @app.post("/embeddings", response_model=EmbeddingResponse, include_in_schema=False)
    async def infinity_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        return await answer_embeddings(infinity_request(body), request.receive)

    async def cohere_embed(body: CohereEmbedRequest, request: Request) -> Response:
        """Cohere's embed: each input's vector in each of `embedding_types` (v2, as vLLM serves it: by type; v1:
        a bare list of float vectors unless types are asked for). int8 and uint8 take each dimension's range from
        the request's own vectors, as `precision` does."""
        inputs, field, images = cohere_inputs(body)
        types = list(dict.fromkeys(body.embedding_types or ["float"]))
        if len(inputs) < 2 and set(types) & set(CALIBRATED):
            raise InputError("embedding types int8 and uint8 take each dimension's range from the request's own "
                             "vectors, so they need at least two inputs", "embedding_types")
        served = registry.resolve(body.model)
        engine = await _engine(registry, served)
        if images and engine.model.images is None:
            raise InputError(f"{_client_name(served, body.model)} is a text model: it embeds no images", field)
        keep_last = None
        if body.max_tokens is not None and body.max_tokens < 1:
            raise InputError(f"max_tokens must be at least 1, got {body.max_tokens}", "max_tokens")
        if body.truncate == "START":  # the last tokens: all the model takes, or max_tokens
            keep_last = -1 if body.max_tokens is None else min(body.max_tokens, engine.max_length)
        elif body.max_tokens is not None and body.max_tokens < engine.max_length:
            raise InputError(f"max_tokens under the model's maximum ({engine.max_length}) is taken with truncate START "
                             "(each input's last max_tokens tokens); with END an input is cut at the model's maximum",
                             "max_tokens")
        asked = EmbeddingRequest(input=inputs, model=body.model, dimensions=body.output_dimension,
                                 prompt_name=cohere_prompt_name(body.input_type, engine.model.spec.prompts),
                                 truncate_prompt_tokens=keep_last)
        answer = await embed(asked, request.receive, field=field,
                             refuse_long=COHERE_CUT if body.truncate == "NONE" else None)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        _, vectors, tokens = answer
        version = "2" if request.url.path.startswith("/v2/") else "1"
        by_type = version == "2" or body.embedding_types is not None  # v1 without types: a bare list of floats
        return cohere_reply(vectors, types if by_type else None, inputs if field == "texts" else None, tokens, version)

    for path in ("/v2/embed", "/v1/embed"):  # Cohere's, and vLLM's on v2
        app.post(path, include_in_schema=path == "/v2/embed")(cohere_embed)

    @app.post("/pooling", response_model=PoolingResponse)
    async def pooling(body: PoolingRequest, request: Request) -> Response:
        """vLLM's /pooling: each input's `task` output as `data`: its pooled vector (embed), its probability per
        label (classify), or each token's vector, L2-normalized per token as vLLM does (token_embed)."""
        served = registry.resolve(body.model)
        task = body.task or ("classify" if served.cross_encoder else "embed")
        for field in ("dimensions", "precision") if task != "embed" else ():
            if getattr(body, field) is not None:
                raise InputError(f"'{field}' applies to pooled vectors (task embed), not to task {task}", field)
        if task == "classify":
            texts = parse_input(body.input, options.max_inputs).texts
            if texts is None:
                raise InputError("task classify takes texts, not token ids", "input")
            answer = await classes(body.model, texts, request, raw=body.activation is False,
                                   keep_last=body.truncate_prompt_tokens)
            rows = None if answer is None else (answer[0], list(answer[2]), answer[3])
        elif task == "token_embed":
            rows = await embed(body, request.receive, per_token=True)
            if rows is not None and body.activation is not False:
                rows = (rows[0], [l2_normalize(tokens) for tokens in rows[1]], rows[2])
        else:
            rows = await embed(body, request.receive)
            rows = None if rows is None else (rows[0], list(quantize(rows[1], body.precision or "float32")), rows[2])
        if rows is None:
            return Response(status_code=CLIENT_CLOSED)
        served, outputs, tokens = rows
        name = _client_name(served, body.model)
        if body.encoding_format in BINARY_FORMATS:
            return binary_reply(outputs, body, "pool", name, tokens)
        # base64: each input's values (a token_embed's tokens in a row) as one string; JSON numbers: streamed
        if body.encoding_format != "base64" and (task == "token_embed" or sum(map(np.size, outputs)) > PIECE_FLOATS):
            items = pooled_tokens(outputs) if task == "token_embed" else row_items(np.stack(outputs), vllm_item)
            return streamed_data(vllm_reply(PoolingResponse, "pool", name, [], tokens).body.decode(), items)
        data = [Pooled.model_construct(index=i, data=encode_vectors(out.reshape(1, -1), body.encoding_format,
                                                                    body.embed_dtype, body.endianness)[0])
                for i, out in enumerate(outputs)]
        return vllm_reply(PoolingResponse, "pool", name, data, tokens)

    async def tei_vectors(body: TEITextOptions, inputs: str | list, request: Request, normalize: bool = True,
                          dimensions: int | None = None, per_token: bool = False, sparse: bool = False
                          ) -> tuple[ServedModel, Any, int] | None:
        """`embed` for TEI's requests: their texts' options as OpenAI's and vLLM's fields say them."""
        asked = EmbeddingRequest(input=inputs, model=body.model, dimensions=dimensions, prompt_name=body.prompt_name,
                                 truncate_prompt_tokens=body.keep_last)
        return await embed(asked, request.receive, normalize=normalize, field="inputs",
                           refuse_long=TEI_CUT if body.truncate is False else None, per_token=per_token,
                           sparse=sparse)

    @app.post("/embed", response_model=list[list[float]])
    async def tei_embed(body: TEIEmbedRequest, request: Request) -> Response:
        """Text Embeddings Inference's /embed: the vectors as a bare list of lists of floats."""
        answer = await tei_vectors(body, body.inputs, request, body.normalize, body.dimensions)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        return json_reply([answer[1]], answer[1].size)

    @app.post("/embed_all", response_model=list[list[list[float]]])
    async def tei_embed_all(body: TEIEmbedAllRequest, request: Request) -> Response:
        """Text Embeddings Inference's /embed_all: every token's vector of each input (the encoder's last hidden
        state, special tokens included), unpooled and unnormalized; a multi-vector (ColBERT) model's own vectors."""
        answer = await tei_vectors(body, body.inputs, request, per_token=True)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        return json_reply(json_list(answer[1]), sum(tokens.size for tokens in answer[1]))

    @app.post("/embed_sparse", response_model=list[list[SparseValue]])
    async def tei_embed_sparse(body: TEIEmbedAllRequest, request: Request) -> Response:
        """Text Embeddings Inference's /embed_sparse: a SPLADE model's nonzero vocabulary weights of each input."""
        answer = await tei_vectors(body, body.inputs, request, normalize=False, sparse=True)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        rows = sparse_rows(answer[1])
        items = (compact_json([{"index": i, "value": v} for i, v in zip(indices.tolist(), values.tolist())])
                 for indices, values in rows)  # streamed: encoded a row at a time, in the worker thread
        return json_reply(json_list(items), sum(len(indices) for indices, _ in rows))

    @app.post("/similarity", response_model=list[float])
    async def similarity(body: TEISimilarityRequest, request: Request) -> Response:
        """Text Embeddings Inference's /similarity: the source sentence's similarity to each sentence, as the model
        scores it: the cosine of pooled vectors; a multi-vector (ColBERT) model's MaxSim, the source sentence its
        query and the sentences its documents (MultiVectorEncoder's similarity); a SPLADE model's dot product."""
        if not body.inputs.sentences:
            raise EmptyInput("'inputs.sentences' is an empty list; send at least one sentence to compare", "inputs")
        served = registry.resolve(body.model)
        engine = await _engine(registry, served)
        if engine.multi_vector or engine.sparse:
            scores = await scored_similarity(body, _client_name(served, body.model), engine, request)
        else:
            answer = await tei_vectors(body, [body.inputs.source_sentence, *body.inputs.sentences], request, True)
            scores = None if answer is None else answer[1][1:] @ answer[1][0]
        if scores is None:
            return Response(status_code=CLIENT_CLOSED)
        return Response(json.dumps(scores.tolist()), media_type="application/json")

    async def scored_similarity(body: TEISimilarityRequest, name: str, engine: EmbeddingEngine, request: Request
                                ) -> np.ndarray | None:
        """/similarity by the engine's pair scores (`submit_scores`), whose sides take the model's own prompts."""
        if body.prompt_name is not None or body.keep_last is not None:
            field = "prompt_name" if body.prompt_name is not None else "truncation_direction"
            raise InputError(f"'{field}' does not apply to {name}'s similarity, which scores the source sentence as a "
                             "query and the sentences as documents", field)
        source, sentences = body.inputs.source_sentence, body.inputs.sentences
        with admission.admit(len(sentences) + 1):
            if body.truncate is False:
                await run_in_threadpool(_refuse_long_sides, engine, source, sentences)
            future, _ = await run_in_threadpool(engine.submit_scores, [source] * len(sentences), sentences)
            return await _result(future, request.receive)

    async def invocations(request: Request) -> Response:
        """TEI's root route (where huggingface_hub's InferenceClient(base_url=...) posts) and SageMaker's
        /invocations, as TEI and vLLM answer them: by the body, a rerank ("query"), a vLLM score ("text_1", or
        "queries" or "data_1"), a sentence similarity (`inputs` as {"source_sentence", "sentences"}), vLLM's
        /pooling ("input" and "task"),
        and else by the model served: TEI's `inputs` a classifier's /predict, a SPLADE model's /embed_sparse, a
        multi-vector model's /embed_all, else /embed; OpenAI's and vLLM's `input` a classifier's /classify, else
        /v1/embeddings. Each refused as its route refuses it."""
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise UnreadableBody(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise UnreadableBody("the request body must be a JSON object")
        if "query" in body:
            route, shape = rerank, RerankRequest
        elif any(first in body for first, _ in SCORE_SIDES):
            route, shape = score, ScoreRequest
        elif isinstance(body.get("inputs"), dict):
            route, shape = similarity, TEISimilarityRequest
        elif "input" in body and "task" in body:
            route, shape = pooling, PoolingRequest
        else:
            served = registry.resolve(body.get("model") if isinstance(body.get("model"), str) else None)
            engine = await _engine(registry, served)
            route, shape = (((classify, ClassifyRequest) if engine.cross_encoder else (embeddings, EmbeddingRequest))
                            if "input" in body else
                            (predict, PredictRequest) if engine.cross_encoder else
                            (tei_embed_sparse, TEIEmbedAllRequest) if engine.sparse else
                            (tei_embed_all, TEIEmbedAllRequest) if engine.multi_vector else
                            (tei_embed, TEIEmbedRequest))
        try:
            parsed = shape.model_validate(body)
        except ValidationError as exc:
            raise invalid_body(exc) from None
        return await route(parsed, request)

    for path in ("/", "/invocations"):
        app.post(path, include_in_schema=False)(invocations)

    @app.get("/info")
    async def info() -> dict:
        """Text Embeddings Inference's /info, for its clients and deployment checks: the default model."""
        served = registry.resolve(None)
        engine = await _engine(registry, served)
        labels = engine.labels
        classes = {"id2label": {str(i): name for i, name in enumerate(labels)},
                   "label2id": {name: i for i, name in enumerate(labels)}}
        kind = ({"classifier" if len(labels) > 1 else "reranker": classes} if engine.cross_encoder
                else {"embedding": {"pooling": "+".join(engine.model.spec.pooling)}})
        return {"model_id": served.public_name, "model_sha": None, "model_dtype": engine.model.dtype,
                "served_model_name": served.public_name, "model_type": kind,
                "max_concurrent_requests": options.max_queue,
                "max_input_length": engine.max_length, "max_batch_tokens": engine.batch_shape.tokens,
                "max_batch_requests": None, "max_client_batch_size": options.max_inputs,
                "auto_truncate": engine.options.truncate, "tokenization_workers": 1,
                "version": importlib.metadata.version("embed"), "sha": None, "docker_label": None}

    async def rerank(body: RerankRequest, request: Request) -> Response:
        """The documents ranked against the query, best first: a cross-encoder's scores, or an embedding model's
        cosine similarities. A TEI request (`texts`) gets TEI's reply, a bare list of ranks."""
        tei = body.tei
        served = registry.resolve(body.model, rerank=True)
        documents = parse_rerank(body, options.max_inputs)
        if tei and body.truncation_direction.lower() == "left":
            raise InputError("truncation_direction Left is not supported for rerank: a long pair is cut from the "
                             "end of its longer text", "truncation_direction")
        with admission.admit(len(documents)):
            engine = await _engine(registry, served)
            engine.check_rankable()
            check_pair_cuts(body.truncate_prompt_tokens, body.max_tokens_per_doc, engine.max_length)
            if tei and body.truncate is False:
                await run_in_threadpool(_refuse_long_pairs, engine, body.query, documents)
            future, tokens = await run_in_threadpool(engine.submit_scores, [body.query] * len(documents), documents,
                                                     body.raw_scores or body.use_activation is False)
            scores = await _result(future, request.receive)
        if scores is None:
            return Response(status_code=CLIENT_CLOSED)
        if tei:
            ranks = [TEIRank(index=i, score=score, text=documents[i] if body.return_text else None)
                     for i, score in ranked(scores)]
            return Response(TypeAdapter(list[TEIRank]).dump_json(ranks, exclude_none=True),
                            media_type="application/json")
        results = [RerankResult(index=i, relevance_score=score,
                                document=RerankDocument(text=documents[i]) if body.return_documents else None)
                   for i, score in ranked(scores, body.top_n or None)]
        reply = RerankResponse(id=f"rerank-{secrets.token_hex(12)}", model=_client_name(served, body.model),
                               usage=Usage(prompt_tokens=tokens, total_tokens=tokens), results=results)
        return Response(reply.model_dump_json(exclude_none=True), media_type="application/json")

    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):  # vLLM's three spellings; Jina's, Cohere's v1 and v2; TEI's
        app.post(path, response_model=RerankResponse | list[TEIRank])(rerank)

    async def score(body: ScoreRequest, request: Request) -> Response:
        """vLLM's /score: a score per (text_1, text_2) pair, in order: a cross-encoder's, or an embedding model's
        cosine similarity."""
        served = registry.resolve(body.model, rerank=True)
        firsts, seconds = parse_score(body, options.max_inputs)
        with admission.admit(len(seconds)):
            engine = await _engine(registry, served)
            engine.check_rankable()
            check_pair_cuts(body.truncate_prompt_tokens, None, engine.max_length)
            future, tokens = await run_in_threadpool(engine.submit_scores, firsts, seconds,
                                                     body.use_activation is False)
            scores = await _result(future, request.receive)
        if scores is None:
            return Response(status_code=CLIENT_CLOSED)
        return vllm_reply(ScoreResponse, "score", _client_name(served, body.model),
                           [Score(index=i, score=float(s)) for i, s in enumerate(scores)], tokens)

    for path in ("/score", "/v1/score"):  # vLLM's two spellings
        app.post(path, response_model=ScoreResponse)(score)

    async def classes(model: str | None, inputs: list[str | tuple[str, str]] | Inputs, request: Request,
                      raw: bool = False, keep_last: int | None = None, refuse_long: bool = False
                      ) -> tuple[ServedModel, EmbeddingEngine, np.ndarray, int] | None:
        """The served classifier, each input's score per label and the tokens; None if the client hung up first.
        `inputs`: texts and pairs, or token ids (vLLM's). `keep_last` -1 keeps the model's maximum from the end;
        `refuse_long` refuses an input over the model's length (TEI's `truncate: false`)."""
        served = registry.resolve(model, rerank=True)
        with admission.admit(len(inputs)):
            engine = await _engine(registry, served)
            engine.check_classifies(_client_name(served, model))
            if refuse_long:
                await run_in_threadpool(_refuse_long_inputs, engine, inputs)
            keep_last = engine.max_length if keep_last == -1 else keep_last
            if isinstance(inputs, Inputs):
                rows = await run_in_threadpool(_cut_ids, engine, inputs.token_ids, keep_last)
                future, tokens = engine.submit_class_rows(rows, raw), sum(map(len, rows))
            else:
                future, tokens = await run_in_threadpool(engine.submit_classes, inputs, raw, keep_last)
            scores = await _result(future, request.receive)
        return None if scores is None else (served, engine, scores, tokens)

    @app.post("/predict", response_model=list[Prediction] | list[list[Prediction]])
    async def predict(body: PredictRequest, request: Request) -> Response:
        """Text Embeddings Inference's /predict: every label's score for each input, best first; a batch gets a
        list per input. Scored as TEI scores them, whatever the model's problem_type: a softmax over several labels,
        a sigmoid for one."""
        inputs, batch = parse_predict(body.inputs, options.max_inputs)
        answer = await classes(body.model, inputs, request, True, body.keep_last, body.truncate is False)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        _, engine, logits, _ = answer
        scores = logits if body.raw_scores else class_scores(logits)
        predictions = labels_best_first(scores, engine.labels)
        return Response(compact_json(predictions if batch else predictions[0]), media_type="application/json")

    async def classify(body: ClassifyRequest, request: Request) -> Response:
        """vLLM's /classify: each text's probability per label, and its most probable label; or infinity's, whose
        client always sends `raw_scores`: each text's score per label, best first (its logits with raw_scores)."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        if texts and not all(isinstance(text, str) for text in texts):  # vLLM's token ids, counted there; a mix refused
            texts = parse_input(body.input, options.max_inputs)
        else:
            _check_count(texts, options.max_inputs, "input")
        infinity = body.raw_scores is not None
        answer = await classes(body.model, texts, request, raw=infinity or body.use_activation is False,
                               keep_last=body.truncate_prompt_tokens)
        if answer is None:
            return Response(status_code=CLIENT_CLOSED)
        served, engine, probs, tokens = answer
        if infinity:
            scores = probs if body.raw_scores else class_scores(probs)
            return infinity_classes(scores, engine.labels, _client_name(served, body.model), tokens)
        data = [ClassificationData(index=i, label=engine.labels[int(np.argmax(row))], probs=row.tolist(),
                                   num_classes=len(row)) for i, row in enumerate(probs)]
        return vllm_reply(ClassificationResponse, "classify", _client_name(served, body.model), data, tokens)

    for path in ("/classify", "/v1/classify"):  # vLLM's two spellings
        app.post(path, response_model=ClassificationResponse)(classify)

    @app.post("/tokenize", response_model=TokenizeResponse | list[list[TEIToken]])
    async def tokenize(body: TokenizeRequest) -> Response:
        """vLLM's /tokenize (`prompt`: its ids and their count) or TEI's (`inputs`: each token's id, text and
        span in UTF-8 bytes, per text, as TEI counts them; the model's prompt, named or its default, before each
        text); the whole text, never cut."""
        if (body.prompt is None) == (body.inputs is None):
            raise InputError("send 'prompt' (one text, as vLLM) or 'inputs' (texts, as TEI), not both or neither",
                             "prompt" if body.inputs is None else "inputs")
        field, given = ("prompt", body.prompt) if body.prompt is not None else ("inputs", body.inputs)
        texts = [given] if isinstance(given, str) else given
        if not texts:
            raise EmptyInput(f"'{field}' is an empty list; send at least one text", field)
        _check_count(texts, options.max_inputs, field)
        if body.inputs is not None and "" in texts:
            raise EmptyInput(f"input {texts.index('')} is empty; send at least one character", field)
        engine = await _engine(registry, registry.resolve(body.model))
        limit = engine.max_length * TOKENIZE_CHARS_PER_TOKEN
        if (long := next((i for i, text in enumerate(texts) if len(text) > limit), None)) is not None:
            raise InputError(f"input {long} has {len(texts[long]):,} characters, more than the {limit:,} /tokenize "
                             f"takes for this model ({TOKENIZE_CHARS_PER_TOKEN} a token of its maximum length, as TEI "
                             "limits it)", field)
        if body.inputs is not None or body.prompt_name is not None:
            texts = [(engine.resolve_prompt(None, body.prompt_name) or "") + text for text in texts]
        tokenizer = engine.model.tokenizer
        if body.prompt is not None:
            found = (await run_in_threadpool(tokenizer.whole_tokens, texts, body.add_special_tokens))[0]
            reply = TokenizeResponse(count=len(found.ids), max_model_len=engine.max_length, tokens=found.ids)
            return Response(reply.model_dump_json(), media_type="application/json")
        tokenizer.checked(texts)  # refused before the reply starts; then each text's tokens as they are found
        parts = tei_tokens(texts, tokenizer, body.add_special_tokens)
        if sum(map(len, texts)) > INLINE_TOKENIZE_CHARS:
            return streamed_json(parts)
        return Response("".join(parts), media_type="application/json")

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        """vLLM's /detokenize: token ids back to text."""
        engine = await _engine(registry, registry.resolve(body.model))
        text = await run_in_threadpool(engine.model.tokenizer.text_of, body.tokens, False, "tokens")
        return {"prompt": text}

    @app.post("/decode", response_model=list[str])
    async def decode(body: DecodeRequest) -> list[str]:
        """TEI's /decode: each list of ids back to text."""
        rows = [body.ids] if body.ids and isinstance(body.ids[0], int) else body.ids
        if not rows or not all(rows):
            raise EmptyInput("'ids' is empty, or holds an empty list; send the token ids to decode", "ids")
        _check_count(rows, options.max_inputs, "ids", "lists of token ids")
        tokenizer = (await _engine(registry, registry.resolve(None))).model.tokenizer
        return await run_in_threadpool(lambda: [tokenizer.text_of(row, body.skip_special_tokens) for row in rows])

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        names = [name for m in registry.models for name in m.served_names or (m.name,)]
        return ModelList(data=[ModelCard(id=name, created=registry.created) for name in names])

    app.get("/models", response_model=ModelList, include_in_schema=False)(models)  # infinity's

    @app.get("/v1/models/{name:path}", response_model=ModelCard)
    async def model(name: str) -> ModelCard:
        """OpenAI's retrieve: one served model by any name it answers to (a Hub id holds a '/')."""
        if name not in registry.names():
            raise ModelNotFound(f"model {name!r} is not served here; served: "
                                f"{', '.join(m.public_name for m in registry.models)}", "model")
        return ModelCard(id=name, created=registry.created)

    @app.get("/health")
    async def health() -> dict:
        registry.check_ready()
        return {"status": "ok", "models": [m.public_name for m in registry.models],
                "loaded": [m.public_name for m in registry.loaded()]}

    app.get("/", include_in_schema=False)(health)  # TEI's
    for method in (app.get, app.post):  # SageMaker's, as TEI and vLLM answer it
        method("/ping", include_in_schema=False)(health)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        engines = {m.public_name: m.engine.stats() for m in registry.loaded()}
        return metrics.render(admission.in_flight, engines)

    front = Front(app, answer_embeddings, metrics, options.api_key, options.max_body_bytes,
                  AccessLog() if options.access_log else None)
    if not options.cors_origins:
        return front
    # Outside `Front`: a browser's preflight carries no API key, and every answer needs the CORS headers.
    return CORSMiddleware(front, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                          allow_headers=["*"])


async def _handle(request: Request, exc: Exception) -> Response:
    return error_response(exc, speaks_tei(request.scope))


async def _engine(registry: ModelRegistry, served: ServedModel) -> EmbeddingEngine:
    """The served model's engine, loaded. A thread hop costs more than a loaded engine's lookup or a short text's
    tokens: only loading hops."""
    return served.engine if served.engine.loaded else await run_in_threadpool(registry.loaded_engine, served)


def _client_name(served: ServedModel, asked: str | None) -> str:
    """The model name to answer with: the one the client used, or the served model's public name."""
    return served.public_name if asked is None or asked in DEFAULT_NAMES else asked


def _check_count(items: list, limit: int, field: str, what: str = "texts") -> None:
    """Refuse a request field holding none of `what`, or more than the server's limit per request."""
    if not items or len(items) > limit:
        raise InputError(f"'{field}' must hold 1 to {limit} {what}", field)


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
    return _cut_ids(engine, inputs.token_ids, keep_last)


def _cut_ids(engine: EmbeddingEngine, token_ids: list[list[int]], keep_last: int | None) -> list[list[int]]:
    """Token ids checked against the vocabulary and cut as texts are, or to their last `keep_last`."""
    if keep_last is not None:
        engine.check_keep_last(keep_last)
        token_ids = [ids[-keep_last:] for ids in token_ids]
    return check_token_ids(token_ids, engine.vocab_size, engine.max_length, engine.options.long_input_mode)


def _refuse_long(engine: EmbeddingEngine, texts: list[str], prompt_name: str | None, query: bool = False,
                 param: str = "inputs", advice: str = TEI_CUT) -> None:
    """TEI's `truncate: false` (Cohere's NONE): an input over the model's length (a multi-vector model's query or
    document length) is refused, though this server would cut it; `param` names the request's field."""
    tokenizer = engine.model.tokenizer
    tokenizer.refuse_long(tokenizer.whole_lengths(texts, engine.resolve_prompt(None, prompt_name)), advice, param,
                          engine.input_length(query))


def _refuse_long_sides(engine: EmbeddingEngine, query: str, documents: list[str],
                       params: tuple[str, str] = ("inputs", "inputs")) -> None:
    """TEI's `truncate: false` where a query and its documents are embedded apart, each with its side's prompt
    and, for a multi-vector model, its side's length; `params` names the two fields."""
    _refuse_long(engine, [query], engine.side_prompt(True) if engine.multi_vector else None, True, params[0])
    _refuse_long(engine, documents, engine.side_prompt(False) if engine.multi_vector else None, False, params[1])


def _refuse_long_pairs(engine: EmbeddingEngine, query: str, documents: list[str]) -> None:
    """TEI's `truncate: false` on /rerank: a (query, text) pair over a cross-encoder's length is refused, naming
    the text; any other model embeds the query and each text apart, each refused over its own side's length."""
    if not engine.cross_encoder:
        return _refuse_long_sides(engine, query, documents, ("query", "texts"))
    tokenizer = engine.model.tokenizer
    lengths = tokenizer.pair_whole_lengths([query] * len(documents), documents)
    tokenizer.refuse_long(lengths, TEI_CUT, "texts")


def _refuse_long_inputs(engine: EmbeddingEngine, inputs: list[str | tuple[str, str]]) -> None:
    """TEI's `truncate: false` on /predict: a text or pair over the model's length is refused, naming it."""
    tokenizer = engine.model.tokenizer
    singles, pairs = split_pairs(inputs)
    lengths = dict(zip(singles, tokenizer.whole_lengths([inputs[i] for i in singles])))
    lengths |= zip(pairs, tokenizer.pair_whole_lengths([inputs[i][0] for i in pairs], [inputs[i][1] for i in pairs]))
    tokenizer.refuse_long([lengths[i] for i in range(len(inputs))], TEI_CUT, "inputs")


async def _result(future: Future, receive: Receive) -> np.ndarray | None:
    """The engine's vectors, or None if the client hung up first; then its queued rows are dropped. A hang-up
    cancels the wait by callback (`asyncio.wait` costs a one-text request ~5% of its event-loop time)."""
    waiter = asyncio.wrap_future(future)  # cancelling it cancels the engine's job too: its unlaunched batches drop
    hangup = asyncio.ensure_future(_disconnect(receive))
    hangup.add_done_callback(lambda _: waiter.cancel())
    try:
        return await waiter
    except asyncio.CancelledError:
        if hangup.done() and not hangup.cancelled():
            return None
        raise
    finally:
        hangup.cancel()
        waiter.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
