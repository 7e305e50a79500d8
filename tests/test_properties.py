"""Property-based tests (hypothesis): whatever bytes a file or JSON a client sends, the readers and the API's
input parsing either return what was written or refuse with embed's own error, never another exception."""

import csv
import io
import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedder.errors import EmbedError, InputError
from embedder.io.readers import ReadOptions, read_inputs
from embedder.serve.api import EmbeddingRequest, parse_input

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Text as files carry it: any Unicode scalar value (hypothesis leaves out lone surrogates) but line ends.
LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def records(tmp_path, name: str, data: bytes, options: ReadOptions = ReadOptions()) -> list:
    path = tmp_path / name
    path.write_bytes(data)
    return list(read_inputs([str(path)], options))


@SETTINGS
@given(data=st.binary(max_size=300), name=st.sampled_from(["a.txt", "a.jsonl", "a.csv", "a.tsv"]))
def test_any_bytes_are_records_or_an_input_error(tmp_path, data, name):
    try:
        got = records(tmp_path, name, data)
    except EmbedError as e:
        assert f"{name}" in str(e).split(":")[0] and "\n" not in str(e)
    else:
        assert all(isinstance(r.text, str) for r in got)


@SETTINGS
@given(lines=st.lists(LINE, min_size=1, max_size=8), crlf=st.booleans())
def test_txt_gives_back_every_line(tmp_path, lines, crlf):
    eol = "\r\n" if crlf else "\n"
    got = records(tmp_path, "a.txt", "".join(line + eol for line in lines).encode())
    assert [r.text for r in got] == lines


@SETTINGS
@given(texts=st.lists(st.text(min_size=1), min_size=1, max_size=8), ascii_only=st.booleans(),
       extra=st.dictionaries(st.sampled_from(["id2", "meta", "x"]), JSON_VALUES, max_size=2))
def test_jsonl_gives_back_every_text(tmp_path, texts, ascii_only, extra):
    rows = [json.dumps({**extra, "text": t}, ensure_ascii=ascii_only) for t in texts]
    got = records(tmp_path, "a.jsonl", "\n".join(rows).encode())
    assert [r.text for r in got] == texts


@SETTINGS
@given(value=JSON_VALUES)
def test_any_json_line_is_a_record_or_an_input_error(tmp_path, value):
    try:
        got = records(tmp_path, "a.jsonl", json.dumps(value).encode() + b"\n")
    except EmbedError as e:
        assert str(e).split(":")[0].endswith("a.jsonl line 1")
    else:
        assert isinstance(value, dict) and [r.text for r in got] == [value["text"]]


@SETTINGS
@given(texts=st.lists(st.text(min_size=1).filter(lambda t: t.strip(string.whitespace) != ""), min_size=1,
                      max_size=6),
       delimiter=st.sampled_from([",", "\t"]), quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_csv_and_tsv_give_back_every_field(tmp_path, texts, delimiter, quoting):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator="\r\n")
    writer.writerow(["id", "text"])
    writer.writerows([[i, t] for i, t in enumerate(texts)])
    got = records(tmp_path, "a.csv" if delimiter == "," else "a.tsv", buffer.getvalue().encode())
    assert [r.text for r in got] == texts


@SETTINGS
@given(body=JSON_VALUES)
def test_any_request_body_is_parsed_or_refused_with_a_param(body):
    """What pydantic accepts, parse_input classifies or refuses naming `input`: no other exception escapes."""
    try:
        request = EmbeddingRequest.model_validate(body if isinstance(body, dict) else {"input": body})
    except ValueError:  # pydantic's ValidationError: the server answers it as a 400 naming the field
        return
    try:
        inputs = parse_input(request.input, max_inputs=16)
    except InputError as e:
        assert e.param == "input"
    else:
        assert 1 <= len(inputs) <= 16


@pytest.mark.parametrize("text", ["a\ud800", "\udfffb", "x\ud83d"])
def test_lone_surrogates_never_reach_the_tokenizer(text):
    with pytest.raises(InputError, match="lone UTF-16 surrogate"):
        parse_input([text], max_inputs=4)
