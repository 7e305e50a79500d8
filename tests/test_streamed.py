"""Replies encoded a piece at a time (`embedder.serve.streamed`) are the JSON that encoding them whole gives, at
every piece boundary: empty arrays, one row, rows wider than a piece, several pieces and a partial last one."""

import json

import numpy as np
import pytest

from embedder.serve.streamed import PIECE_FLOATS, _encoded, json_list


@pytest.mark.parametrize("shapes", [[(0, 8)], [(1, 8)], [(3, PIECE_FLOATS + 5)], [(2, 3), (0, 3), (4, 3)],
                                    [(PIECE_FLOATS // 384 * 3 + 1, 384)], [(PIECE_FLOATS // 96, 96)]])
def test_pieces_join_to_the_whole_json(shapes) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    pieces = list(_encoded(json_list(arrays)))
    assert "".join(pieces) == json.dumps([a.tolist() for a in arrays], separators=(",", ":"))
    most = max(PIECE_FLOATS, *(width for _, width in shapes))  # a piece: whole rows, at least one
    assert all(piece.count(",") <= most + 1 for piece in pieces)


def test_text_around_the_arrays_is_kept_in_order() -> None:
    parts = ['{"a":', np.ones((2, 2), np.float32), ',"b":', np.zeros((0, 2), np.float32), "}"]
    assert json.loads("".join(_encoded(parts))) == {"a": [[1.0, 1.0], [1.0, 1.0]], "b": []}
