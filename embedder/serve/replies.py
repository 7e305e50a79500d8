"""How each API writes an answer that is more than a pydantic model: vLLM's envelopes, items and binary replies,
TEI's tokens, Cohere's embeddings by type."""

import json
import secrets
import time
from collections.abc import Iterator

import numpy as np
from fastapi.responses import Response

from ..quantize import quantize
from ..tokenizer import TextTokenizer
from .api import EmbeddingRequest, Usage, VLLMList, encode_vectors, typed_values
from .streamed import compact_json, json_reply


def vllm_reply(shape: type[VLLMList], kind: str, model: str, data: list, tokens: int) -> Response:
    """A vLLM reply: `data` in its envelope, with an id of `kind` and the tokens' usage. Built without validation:
    the values are the engine's own (the pooled vectors' floats were most of a reply's cost)."""
    reply = shape.model_construct(id=f"{kind}-{secrets.token_hex(12)}", created=int(time.time()), model=model,
                                  data=data, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
    return Response(reply.model_dump_json(), media_type="application/json")


def binary_reply(outputs: list[np.ndarray], body: EmbeddingRequest, kind: str, model: str, tokens: int) -> Response:
    """vLLM's bytes and bytes_only replies: every output's values, in `embed_dtype` and `endianness`, one after
    another as the body; with bytes, a `metadata` header (JSON) says where each output lies, its type and shape."""
    values = [typed_values(np.asarray(out, np.float32), body.embed_dtype, body.endianness) for out in outputs]
    headers = None
    if body.encoding_format == "bytes":
        ends = np.cumsum([0] + [v.nbytes for v in values]).tolist()
        items = [{"index": i, "embed_dtype": body.embed_dtype or "float32", "endianness": body.endianness or "little",
                  "start": ends[i], "end": ends[i + 1], "shape": list(v.shape)} for i, v in enumerate(values)]
        headers = {"metadata": json.dumps({"id": f"{kind}-{secrets.token_hex(12)}", "created": int(time.time()),
                                           "model": model, "data": items,
                                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})}
    return Response(b"".join(v.tobytes() for v in values), media_type="application/octet-stream", headers=headers)


def vllm_item(index: int, data: str) -> str:
    """One of /pooling's `data`, as `Pooled` writes it."""
    return f'{{"index":{index},"object":"pooling","data":{data}}}'


def openai_item(index: int, embedding: str) -> str:
    """One of /v1/embeddings' `data`, as `Embedding` writes it."""
    return f'{{"object":"embedding","index":{index},"embedding":{embedding}}}'


def pooled_tokens(outputs: list[np.ndarray]) -> Iterator[str | np.ndarray]:
    """/pooling's `data` of each input's token vectors, as `streamed_json`'s parts."""
    for i, out in enumerate(outputs):
        yield ("," if i else "") + vllm_item(i, "")[:-1]  # the item up to its data
        yield out
        yield "}"


def tei_tokens(texts: list[str], tokenizer: TextTokenizer, special_tokens: bool) -> Iterator[str]:
    """TEI's /tokenize reply, a text at a time: each token's id, text, whether it is special, and its span in the
    text's UTF-8 bytes (None for a special token). One text's tokens are held at a time: a body of 32 MB held every
    token of every text at once (3.5 GB for 8 MB of text)."""
    for k, text in enumerate(texts):
        found = tokenizer.whole_tokens([text], special_tokens)[0]
        at = _utf8_offsets(text)
        tokens = [{"id": i, "text": text[span[0]:span[1]] if span else string, "special": special,
                   "start": int(at[span[0]]) if span else None, "stop": int(at[span[1]]) if span else None}
                  for i, string, span, special in zip(found.ids, found.strings, found.spans, found.special)]
        yield ("," if k else "[") + compact_json(tokens)
    yield "]"


def _utf8_offsets(text: str) -> np.ndarray:
    """Where each character of `text` starts in its UTF-8 bytes, and the bytes' length last."""
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    widths = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths)])


def cohere_reply(vectors: np.ndarray, types: list[str] | None, texts: list[str] | None, tokens: int,
                 version: str) -> Response:
    """Cohere's embed reply: the vectors in each of `types` (by type, the arrays encoded while sent), or as a bare
    list of float vectors (v1 without types); the texts echoed, and the tokens as Cohere's meta counts them.
    int8 and uint8 take each dimension's range from these vectors."""
    parts = [f'{{"id":"embd-{secrets.token_hex(12)}","embeddings":']
    values = {kind: (encode_vectors(vectors, "base64") if kind == "base64" else
                     vectors if kind == "float" else quantize(vectors, kind)) for kind in types or ["float"]}
    if types is None:
        parts.append(vectors)
    for i, (kind, typed) in enumerate(values.items() if types is not None else ()):
        parts += ["{" if i == 0 else ",", f'"{kind}":', compact_json(typed) if kind == "base64" else typed]
    tail = {"texts": texts} if texts is not None else {}
    tail |= {"meta": {"api_version": {"version": version}, "billed_units": {"input_tokens": tokens},
                      "tokens": {"input_tokens": tokens}},
             "response_type": "embeddings_floats" if types is None else "embeddings_by_type"}
    parts.append(("}," if types is not None else ",") + compact_json(tail)[1:])
    return json_reply(parts, sum(np.size(v) for v in values.values()))


def labels_best_first(scores: np.ndarray, labels: list[str]) -> list[list[dict]]:
    """Each input's `{"score", "label"}` per label, best first, ties in label order: TEI's /predict, infinity's
    /classify."""
    return [[{"score": float(row[k]), "label": labels[k]} for k in np.argsort(-row, kind="stable")] for row in scores]


def infinity_classes(scores: np.ndarray, labels: list[str], model: str, tokens: int) -> Response:
    """infinity's /classify reply: each input's score per label, best first."""
    data = labels_best_first(scores, labels)
    return Response(compact_json({"object": "classify", "data": data, "model": model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                                  "id": f"infinity-{secrets.token_hex(12)}", "created": int(time.time())}),
                    media_type="application/json")
