"""The access log's line: uvicorn's format, a hostile path kept to one printable line, and a failing stream."""

import io

from embedder.serve.access_log import AccessLog, access_line


def scope(path: str = "/v1/embeddings", raw: bytes | None = None, query: bytes = b"", client=("127.0.0.1", 50412)):
    return {"type": "http", "method": "POST", "path": path, "raw_path": raw, "query_string": query,
            "http_version": "1.1", "client": client}


def test_line_is_uvicorns() -> None:
    assert access_line(scope(), 200) == 'INFO:     127.0.0.1:50412 - "POST /v1/embeddings HTTP/1.1" 200 OK\n'
    assert access_line(scope(query=b"a=1"), 404).endswith('"POST /v1/embeddings?a=1 HTTP/1.1" 404 Not Found\n')
    assert access_line(scope(client=None), 499) == 'INFO:      - "POST /v1/embeddings HTTP/1.1" 499 \n'


def test_hostile_path_stays_one_printable_line() -> None:
    line = access_line(scope(raw=b'/v1/x"\n\x1b[31mINFO:     forged', query=b'q="\r'), 404)
    assert line.count("\n") == 1 and line[:-1].isprintable()
    assert '/v1/x%22\\n\\x1b[31mINFO:     forged?q=%22\\r' in line


def test_failing_stream_ends_the_log_not_the_request() -> None:
    closed = io.StringIO()
    closed.close()
    log = AccessLog(closed)
    log.write(scope(), 200)
    assert log.stream is None
    log.write(scope(), 200)  # and stays quiet
