"""Readers: every input kind to ordered Records, BOM/CRLF/unicode intact, bad input named by file and line."""

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedder.errors import InputError
from embedder.io.readers import ReadOptions, Record, count_hint, ids_are_text, read_inputs

TEXTS = ["héllo wörld", "漢字かな交じり文", "emoji 🙂🚀 outside the BMP", "שלום עולם", "e\u0301 combining"]


def texts_of(records):
    return [r.text for r in records]


def test_txt_keeps_lines_drops_bom_and_crlf(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(TEXTS).encode() + b"\r\n")
    records = list(read_inputs([str(path)]))
    assert texts_of(records) == TEXTS
    assert [(r.index, r.id) for r in records] == [(i, i) for i in range(len(TEXTS))]
    assert records[2].where == f"{path} line 3"


def test_txt_keeps_empty_lines_as_records_for_the_empty_policy(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\n\n  \nfour")
    assert texts_of(read_inputs([str(path)])) == ["one", "", "  ", "four"]


def test_jsonl_fields_ids_and_blank_lines(tmp_path):
    path = tmp_path / "a.ndjson"
    lines = [json.dumps({"body": t, "key": f"k{i}"}, ensure_ascii=False) for i, t in enumerate(TEXTS)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    records = list(read_inputs([str(path)], ReadOptions(text_field="body", id_field="key")))
    assert texts_of(records) == TEXTS
    assert [r.id for r in records] == [f"k{i}" for i in range(len(TEXTS))]


def test_id_types_and_the_id_column_type(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "id": 7}\n')
    assert next(read_inputs([str(path)], ReadOptions(id_field="id"))).id == 7
    assert ids_are_text([str(path)], ReadOptions(id_field="id"))
    pq.write_table(pa.table({"text": ["a"], "n": [3], "s": ["x"]}), tmp_path / "a.parquet")
    assert not ids_are_text([str(tmp_path / "a.parquet")], ReadOptions(id_field="n"))
    assert ids_are_text([str(tmp_path / "a.parquet")], ReadOptions(id_field="s"))


def test_csv_and_tsv_by_column_name_with_bom_crlf_and_quoted_newlines(tmp_path):
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(b'\xef\xbb\xbfid,text\r\n1,"multi\r\nline, with comma"\r\n2,' + TEXTS[1].encode() + b"\r\n")
    tsv_path = tmp_path / "b.tsv"
    tsv_path.write_text("text\tn\n" + TEXTS[2] + "\t1\n")
    records = list(read_inputs([str(csv_path), str(tsv_path)]))
    assert texts_of(records) == ["multi\r\nline, with comma", TEXTS[1], TEXTS[2]]
    assert [r.index for r in records] == [0, 1, 2]


def test_parquet_in_batches_with_ids(tmp_path):
    path = tmp_path / "a.parquet"
    texts = [f"row {i}" for i in range(2500)]
    pq.write_table(pa.table({"text": texts, "doc": [f"d{i}" for i in range(2500)]}), path, row_group_size=1000)
    records = list(read_inputs([str(path)], ReadOptions(id_field="doc")))
    assert texts_of(records) == texts and records[-1].id == "d2499"
    assert count_hint([str(path)]) == 2500


def test_directory_and_glob_are_one_text_per_file(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.md").write_text("second\r\nfile")
    (tmp_path / "docs" / "a.md").write_bytes(b"\xef\xbb\xbffirst")
    (tmp_path / "docs" / "sub" / "c.md").write_text("third")
    (tmp_path / "docs" / ".hidden").write_text("skipped")
    folder = str(tmp_path / "docs")
    records = list(read_inputs([folder]))
    assert texts_of(records) == ["first", "second\nfile", "third"]
    assert records[0].id == str(tmp_path / "docs" / "a.md")
    pattern = str(tmp_path / "docs" / "*.md")
    assert texts_of(read_inputs([pattern])) == ["first", "second\nfile"]
    assert ids_are_text([pattern]) and ids_are_text([folder]) and count_hint([folder]) == 3


def test_several_inputs_share_one_index(tmp_path):
    (tmp_path / "a.txt").write_text("a\nb\n")
    (tmp_path / "b.jsonl").write_text('{"text": "c"}\n')
    records = list(read_inputs([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]))
    assert records == [Record(0, 0, "a", records[0].where), Record(1, 1, "b", records[1].where),
                       Record(2, 2, "c", records[2].where)]
    assert not ids_are_text([str(tmp_path / "a.txt")]) and count_hint([str(tmp_path / "a.txt")]) is None


def test_stdin_lines_and_jsonl(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("x\r\ny\n".encode())))
    assert texts_of(read_inputs([])) == ["x", "y"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"text": "z"}\n')))
    assert texts_of(read_inputs(["-"], ReadOptions(input_format="jsonl"))) == ["z"]


def test_reading_is_lazy(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "fine"}\nnot json\n')
    stream = read_inputs([str(path)])
    assert next(stream).text == "fine"  # the bad line is only met when reached
    with pytest.raises(InputError):
        next(stream)


@pytest.mark.parametrize(
    ("name", "content", "options", "message"),
    [
        ("a.jsonl", b'{"text": "ok"}\n{"text": \n', ReadOptions(), "a.jsonl line 2: invalid JSON"),
        ("a.jsonl", b'{"text": "ok"}\n[1]\n', ReadOptions(), "a.jsonl line 2: expected a JSON object"),
        ("a.jsonl", b'{"body": "ok"}\n', ReadOptions(), "a.jsonl line 1: no field 'text'"),
        ("a.jsonl", b'{"text": 3}\n', ReadOptions(), "a.jsonl line 1: field 'text' is int, not a string"),
        ("a.jsonl", b'{"text": null}\n', ReadOptions(), "a.jsonl line 1: field 'text' is null"),
        ("a.jsonl", b'{"text": "a", "id": 1.5}\n', ReadOptions(id_field="id"), "field 'id' is float"),
        ("a.jsonl", b'{"text": "ok"}\n{"text": "a\\ud800b"}\n', ReadOptions(),
         "a.jsonl line 2: field 'text' holds a lone UTF-16 surrogate at character 1"),
        ("a.jsonl", b'{"text": "ok"}\n' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"\n", ReadOptions(),
         "a.jsonl line 2: JSON nested too deeply"),
        ("a.txt", b"fine\nbad \xff byte\n", ReadOptions(), "a.txt line 2: not valid UTF-8"),
        ("a.csv", b"title,body\nx,y\n", ReadOptions(), "a.csv: no column 'text' (columns: title, body)"),
        ("a.csv", b"text,n\nx,1\ny\n", ReadOptions(), "a.csv line 3: 1 fields, but the header has 2"),
        ("a.csv", b"text\nok\n\xff\n", ReadOptions(), "a.csv line 3: not valid UTF-8"),
        ("a.jsonl", b'{"text": "ok", "n": ' + b"7" * 5000 + b"}\n", ReadOptions(), "a.jsonl line 1: invalid JSON"),
        ("a.tsv", b'id\ttext\n1\tok\n2\t"unclosed quote\n3\tthird\n', ReadOptions(), "a.tsv line 4: unexpected end"),
        ("a.csv", b'text\n"a"b"\n', ReadOptions(), "a.csv line 2: ',' expected after '\"'"),
        ("a.csv", b"text,n,text\nx,1,y\n", ReadOptions(), "a.csv: the header names column 'text' twice"),
        ("a.doc", b"x", ReadOptions(), "a.doc: unknown input extension"),
        ("a.parquet", b"not parquet", ReadOptions(), "a.parquet: not a readable Parquet file"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, name, content, options, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as caught:
        list(read_inputs([str(tmp_path / name)], options))
    assert message in str(caught.value)


def test_parquet_column_and_null_errors(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x", None]}), path)
    with pytest.raises(InputError, match="no column 'text'"):
        list(read_inputs([str(path)]))
    with pytest.raises(InputError, match=r"a.parquet row 1: field 'body' is null"):
        list(read_inputs([str(path)], ReadOptions(text_field="body")))


def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_inputs([str(tmp_path / "nope.txt")]))
    with pytest.raises(InputError, match="no files match"):
        list(read_inputs([str(tmp_path / "*.nothing")]))


FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
GOOD = {name: entry for name, entry in EXPECTED["files"].items() if "error" not in entry}
BROKEN = {name: entry for name, entry in EXPECTED["files"].items() if "error" in entry}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_fixture_inputs_read_as_expected(name):
    entry = GOOD[name]
    path = FIXTURES / name
    options = ReadOptions(id_field="id" if entry["ids"] else None)
    records = list(read_inputs([str(path)], options))
    assert texts_of(records) == EXPECTED["texts"][entry["texts"]] + entry.get("extra", [])
    if path.is_dir():  # one text per file: the id is the file's path
        assert [r.id for r in records] == [str(p) for p in sorted(path.iterdir())]
    else:
        assert [r.id for r in records] == (entry["ids"] or list(range(len(records))))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_fixture_broken_inputs_name_file_and_place(name):
    entry = BROKEN[name]
    with pytest.raises(InputError) as caught:
        list(read_inputs([str(FIXTURES / name)]))
    message = str(caught.value)
    assert name in message
    if "line" in entry:
        assert f"line {entry['line']}" in message
    if "record" in entry:
        assert f"row {entry['record']}" in message
    if "field" in entry:
        assert repr(entry["field"]) in message


def test_a_folder_yields_its_regular_files_only_and_never_the_runs_own(tmp_path):
    """A FIFO in a folder would block the read forever; the run's own output and checkpoint folder, when written
    inside the folder it reads, are not documents."""
    import os

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("alpha")
    os.mkfifo(folder / "pipe")
    (folder / "out.jsonl").write_text('{"id": 0}\n')
    (folder / "out.jsonl.partial").mkdir()
    (folder / "out.jsonl.partial" / "state.json").write_text("{}")
    own = (str(folder / "out.jsonl"), str(folder / "out.jsonl.partial"))
    records = list(read_inputs([str(folder)], ReadOptions(exclude=own)))
    assert [(r.id, r.text) for r in records] == [(str(folder / "a.md"), "alpha")]
    assert len(list(read_inputs([str(tmp_path / "docs" / "*")], ReadOptions(exclude=own)))) == 1
