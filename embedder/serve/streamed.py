"""Replies too large to encode at once, every token's vector of a batch (TEI's /embed_all, vLLM's token_embed) or
many pooled vectors (TEI's /embed), JSON-encoded a piece at a time in a worker thread while they are sent. Encoded
whole on the event loop, one 64-passage /embed_all reply (136 MB of JSON) held every other request, /health
included, for 7.8 s on a 2-core Zen 1, and a 2,048-passage one would have needed ~10 GB of Python floats."""

import json
from collections.abc import Iterable, Iterator

import numpy as np
from fastapi.responses import StreamingResponse

PIECE_FLOATS = 1 << 14  # floats encoded at a time: ~0.3 MB of JSON, a few milliseconds
_compact = json.JSONEncoder(separators=(",", ":")).encode  # as TEI writes its replies


def streamed_json(parts: Iterable[str | np.ndarray]) -> StreamingResponse:
    """A JSON reply of `parts` in order: text as it is, each (rows, dims) array as a JSON list of its rows."""
    return StreamingResponse(_encoded(parts), media_type="application/json")


def json_list(items: Iterable[str | np.ndarray]) -> Iterator[str | np.ndarray]:
    """`items` as the parts of one JSON list."""
    yield "["
    for i, item in enumerate(items):
        if i:
            yield ","
        yield item
    yield "]"


def _encoded(parts: Iterable[str | np.ndarray]) -> Iterator[str]:
    """The reply's text in pieces of at most `PIECE_FLOATS` floats, the text between arrays joined to them.
    StreamingResponse draws each piece in a worker thread; the event loop runs between pieces."""
    text = ""
    for part in parts:
        if isinstance(part, str):
            text += part
            continue
        step = max(1, PIECE_FLOATS // max(part.shape[1], 1))
        for start in range(0, len(part), step):
            yield text + ("," if start else "[") + _compact(part[start:start + step].tolist())[1:-1]
            text = ""
        text += "]" if len(part) else "[]"
    yield text
