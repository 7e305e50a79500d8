"""Replies too large to encode at once, every token's vector of a batch (TEI's /embed_all, vLLM's token_embed) or
many vectors (/v1/embeddings, TEI's /embed), JSON-encoded a piece at a time in a worker thread while they are sent.
Encoded whole on the event loop, one 64-passage /embed_all reply (136 MB of JSON) held every other request,
/health included, for 7.8 s on a 2-core Zen 1, and a 2,048-passage one would have needed ~10 GB of Python floats."""

import itertools
import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from fastapi.responses import Response, StreamingResponse

PIECE_FLOATS = 1 << 14  # values encoded at a time: ~0.3 MB of JSON, a few milliseconds
compact_json = json.JSONEncoder(separators=(",", ":")).encode  # as TEI writes its replies


def streamed_json(parts: Iterable[str | np.ndarray]) -> StreamingResponse:
    """A JSON reply of `parts` in order: text as it is, each (rows, dims) array as a JSON list of its rows."""
    return StreamingResponse(_encoded(parts), media_type="application/json")


def json_reply(parts: Iterable[str | np.ndarray], values: int) -> Response:
    """`streamed_json` where the reply holds more than one piece's `values`; else the same JSON, built at once."""
    if values > PIECE_FLOATS:
        return streamed_json(parts)
    return Response("".join(_encoded(parts)), media_type="application/json")


def streamed_data(envelope: str, items: Iterable[str | np.ndarray]) -> StreamingResponse:
    """`envelope`, a reply's JSON whose `data` is an empty list, with `items` (`streamed_json`'s parts) as its
    data."""
    head, empty, tail = envelope.partition('"data":[]')  # found once: a JSON string escapes its quotes
    if not empty:
        raise ValueError("the envelope has no empty data list")
    return streamed_json(itertools.chain([head + '"data":['], items, ["]" + tail]))


def json_list(items: Iterable[str | np.ndarray]) -> Iterator[str | np.ndarray]:
    """`items` as the parts of one JSON list."""
    yield "["
    for i, item in enumerate(items):
        if i:
            yield ","
        yield item
    yield "]"


def row_items(rows: np.ndarray, item: Callable[[int, str], str]) -> Iterator[str]:
    """The comma-separated JSON `item(index, row)` of each row of `rows` (its values as a JSON list), a piece of
    rows at a time."""
    step = max(1, PIECE_FLOATS // max(rows.shape[1], 1))
    for start in range(0, len(rows), step):
        block = rows[start:start + step].tolist()
        yield ("," if start else "") + ",".join(item(start + j, compact_json(row)) for j, row in enumerate(block))


def _encoded(parts: Iterable[str | np.ndarray]) -> Iterator[str]:
    """The reply's text in pieces of at most `PIECE_FLOATS` values, short text joined to the next piece.
    StreamingResponse draws each piece in a worker thread; the event loop runs between pieces."""
    text = ""
    for part in parts:
        if isinstance(part, str):
            text += part
            if len(text) >= PIECE_FLOATS:
                yield text
                text = ""
            continue
        step = max(1, PIECE_FLOATS // max(part.shape[1], 1))
        for start in range(0, len(part), step):
            yield text + ("," if start else "[") + compact_json(part[start:start + step].tolist())[1:-1]
            text = ""
        text += "]" if len(part) else "[]"
    yield text
