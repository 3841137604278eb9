from __future__ import annotations

import io
from typing import Any

import pytest

from vdsm_imageio.errors import BadRequest, HeadersTooLarge, PayloadTooLarge, PeerClosed
from vdsm_imageio.http.message import Body, Request, read_head, read_json


def maybe_head(data: bytes, limit: int = 4096) -> Request | None:
    return read_head(io.BufferedReader(io.BytesIO(data)), limit)


def head(data: bytes, limit: int = 4096) -> Request:
    req = maybe_head(data, limit)
    assert req is not None, "a request head"
    return req


def body_of(data: bytes, req_bytes: bytes) -> tuple[Body, io.BufferedReader[io.BytesIO]]:
    rfile = io.BufferedReader(io.BytesIO(req_bytes + data))
    req = read_head(rfile, 4096)
    assert req is not None, "a request head"
    return Body(rfile, req, lambda e: PeerClosed(reason=str(e))), rfile


def test_request_head_is_parsed() -> None:
    req = head(b"PUT /images/abc?flush=n&close=y HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    assert (req.method, req.path, req.version) == ("PUT", "/images/abc", "1.1")
    assert req.query == {"flush": "n", "close": "y"}
    assert req.content_length == 10
    assert req.keep_alive


def test_closed_before_request_is_none() -> None:
    assert maybe_head(b"") is None


def test_leading_empty_lines_are_ignored() -> None:
    assert head(b"\r\nGET / HTTP/1.1\r\n\r\n").method == "GET"


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"GET /x\r\n\r\n", "request line"),
        (b"GET /x HTTP/2.0\r\n\r\n", "request line"),
        (b"GET http://h/x HTTP/1.1\r\n\r\n", "request target"),
        (b"GET /x?a=1&a=2 HTTP/1.1\r\n\r\n", "query parameter 'a'"),
        (b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (
            b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "Content-Length",
        ),
    ],
)
def test_malformed_head_is_400_naming_what(raw: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        head(raw)
    assert e.value.fields["field"] == field


def test_header_flood_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n"
    with pytest.raises(HeadersTooLarge):
        head(raw, limit=8192)


def test_huge_header_line_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\nX-A: " + b"b" * 100_000 + b"\r\n\r\n"
    with pytest.raises(HeadersTooLarge):
        head(raw, limit=8192)


def test_head_cut_short_is_peer_closed() -> None:
    with pytest.raises(PeerClosed):
        head(b"GET / HTTP/1.1\r\nHost: x\r\n")


def test_http10_closes_unless_keep_alive() -> None:
    assert not head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive


def test_content_length_body_stops_at_its_end() -> None:
    body, rfile = body_of(b"0123456789NEXT", b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    buf = memoryview(bytearray(64))
    assert body.readinto(buf) == 10
    assert bytes(buf[:10]) == b"0123456789"
    assert body.done
    assert rfile.read() == b"NEXT"


def test_chunked_body_is_decoded() -> None:
    data = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    body, rfile = body_of(data, b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    buf = memoryview(bytearray(64))
    n = body.readinto(buf)
    assert bytes(buf[:n]) == b"hello world"
    assert body.done
    assert rfile.read() == b"NEXT"


def test_chunk_longer_than_its_size_is_400() -> None:
    data = b"3\r\nhello\r\n0\r\n\r\n"
    body, _ = body_of(data, b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadRequest):
        body.readinto(memoryview(bytearray(64)))


def test_bad_chunk_size_is_400() -> None:
    body, _ = body_of(b"zz\r\n", b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadRequest):
        body.readinto(memoryview(bytearray(64)))


def test_body_cut_short_is_peer_closed() -> None:
    body, _ = body_of(b"0123", b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    with pytest.raises(PeerClosed):
        body.readinto(memoryview(bytearray(64)))


def test_read_over_limit_is_rejected() -> None:
    body, _ = body_of(b"x" * 100, b"PUT /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    with pytest.raises(BadRequest):
        body.read(10)


# Smuggling through a lenient head: each of these heads was accepted, with
# a field lost or a value repaired, before the head parser became strict.


@pytest.mark.parametrize(
    "raw",
    [
        # A line without a colon made every later field vanish.
        b"PUT /x HTTP/1.1\r\nX-No-Colon\r\nContent-Length: 5\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n folded\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent(Length: 5\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length: \x0b5\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length: \xa05\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length: 5\x85\r\n\r\n",
        "PUT /x HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode(),
        b"GET /x HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=5-6\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Range: bytes 0-1/*\r\nContent-Range: bytes 5-6/*\r\n\r\n",
        b"GET /images/\xff HTTP/1.1\r\n\r\n",
        b"GET /images/%ff HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\nHost: x\n\n",
    ],
)
def test_lenient_head_is_now_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        head(raw)


def test_head_ended_by_bare_lf_is_refused_without_waiting() -> None:
    # The rest of the stream never comes: the refusal must not wait for it.
    with pytest.raises(BadRequest):
        head(b"GET /x HTTP/1.1\r\nHost: x\r\n\n")


def test_chunk_data_must_end_with_crlf() -> None:
    body, _ = body_of(
        b"3\r\nabc\n0\r\n\r\n", b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with pytest.raises(BadRequest):
        body.readinto(memoryview(bytearray(64)))


def test_malformed_trailer_is_400() -> None:
    body, _ = body_of(
        b"3\r\nabc\r\n0\r\nX-Bad : 1\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    with pytest.raises(BadRequest):
        body.readinto(memoryview(bytearray(64)))


def json_body(data: bytes) -> dict[str, Any]:
    body, _ = body_of(data, b"PATCH /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(data))
    req = head(b"PATCH /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(data))
    return read_json(req, body, 64 * 1024)


@pytest.mark.parametrize("depth", [33, 2000, 30000])
def test_deeply_nested_json_is_400_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(BadRequest) as e:
        json_body(b"[" * depth + b"]" * depth)
    assert e.value.fields["field"] == "JSON body"


def test_nesting_inside_strings_does_not_count() -> None:
    msg = json_body(b'{"op": "zero", "note": "' + b"[{" * 100 + b'\\"]"}')
    assert msg["op"] == "zero"


def test_json_nested_to_the_limit_is_parsed() -> None:
    msg = json_body(b'{"a": ' + b"[" * 31 + b"]" * 31 + b"}")
    assert isinstance(msg["a"], list)


def test_malformed_chunked_json_body_is_400_not_413() -> None:
    data = b"5\r\n{}   \r\nzz\r\n"
    body, _ = body_of(data, b"PATCH /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    req = head(b"PATCH /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadRequest) as e:
        read_json(req, body, 4096)
    assert e.value.fields["field"] == "chunked body"


def test_chunked_json_body_over_the_limit_is_413_saying_so() -> None:
    data = b"a\r\n" + b" " * 10 + b"\r\n0\r\n\r\n"
    body, _ = body_of(data, b"PATCH /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    req = head(b"PATCH /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(PayloadTooLarge) as e:
        read_json(req, body, 4)
    # The length of a chunked body is unknown when the limit is passed.
    assert e.value.message == "Request body exceeds the limit of 4 bytes"
    assert e.value.fields == {"limit": 4}
