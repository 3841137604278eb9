import io

import pytest

from vdsm_imageio.errors import BadRequest, HeadersTooLarge, PeerClosed
from vdsm_imageio.http.message import Body, read_head


def head(data: bytes, limit: int = 4096):
    return read_head(io.BufferedReader(io.BytesIO(data)), limit)


def body_of(data: bytes, req_bytes: bytes):
    rfile = io.BufferedReader(io.BytesIO(req_bytes + data))
    req = read_head(rfile, 4096)
    return Body(rfile, req, lambda e: PeerClosed(reason=str(e))), rfile


def test_request_head_is_parsed():
    req = head(b"PUT /images/abc?flush=n&close=y HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    assert (req.method, req.path, req.version) == ("PUT", "/images/abc", "1.1")
    assert req.query == {"flush": "n", "close": "y"}
    assert req.content_length == 10
    assert req.keep_alive


def test_closed_before_request_is_none():
    assert head(b"") is None


def test_leading_empty_lines_are_ignored():
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
def test_malformed_head_is_400_naming_what(raw, field):
    with pytest.raises(BadRequest) as e:
        head(raw)
    assert e.value.fields["field"] == field


def test_header_flood_is_431():
    raw = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n"
    with pytest.raises(HeadersTooLarge):
        head(raw, limit=8192)


def test_huge_header_line_is_431():
    raw = b"GET / HTTP/1.1\r\nX-A: " + b"b" * 100_000 + b"\r\n\r\n"
    with pytest.raises(HeadersTooLarge):
        head(raw, limit=8192)


def test_head_cut_short_is_peer_closed():
    with pytest.raises(PeerClosed):
        head(b"GET / HTTP/1.1\r\nHost: x\r\n")


def test_http10_closes_unless_keep_alive():
    assert not head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert not head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive


def test_content_length_body_stops_at_its_end():
    body, rfile = body_of(b"0123456789NEXT", b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    buf = memoryview(bytearray(64))
    assert body.readinto(buf) == 10
    assert bytes(buf[:10]) == b"0123456789"
    assert body.done
    assert rfile.read() == b"NEXT"


def test_chunked_body_is_decoded():
    data = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
    body, rfile = body_of(data, b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    buf = memoryview(bytearray(64))
    n = body.readinto(buf)
    assert bytes(buf[:n]) == b"hello world"
    assert body.done
    assert rfile.read() == b"NEXT"


def test_chunk_longer_than_its_size_is_400():
    data = b"3\r\nhello\r\n0\r\n\r\n"
    body, _ = body_of(data, b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadRequest):
        body.readinto(memoryview(bytearray(64)))


def test_bad_chunk_size_is_400():
    body, _ = body_of(b"zz\r\n", b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadRequest):
        body.readinto(memoryview(bytearray(64)))


def test_body_cut_short_is_peer_closed():
    body, _ = body_of(b"0123", b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    with pytest.raises(PeerClosed):
        body.readinto(memoryview(bytearray(64)))


def test_read_over_limit_is_rejected():
    body, _ = body_of(b"x" * 100, b"PUT /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    with pytest.raises(BadRequest):
        body.read(10)
