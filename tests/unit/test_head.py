"""The strict request-head parser (RFC 9112 sections 2-6, RFC 9110 section 5)."""

from __future__ import annotations

import pytest

from vdsm_imageio.errors import BadRequest
from vdsm_imageio.http.head import Fields, parse_field_line, parse_head


def test_head_with_fields_is_parsed() -> None:
    req = parse_head(
        b"PUT /images/abc?flush=n HTTP/1.1\r\nHost: x\r\n"
        b"content-length:\t10 \r\nX-Empty:\r\nX-Inner: a  b\r\n\r\n"
    )
    assert (req.method, req.target, req.version) == ("PUT", "/images/abc?flush=n", "1.1")
    assert req.content_length == 10
    assert req.header("Content-Length") == "10"
    assert req.header("x-empty") == ""
    assert req.header("X-INNER") == "a  b"
    assert req.header("X-Missing") is None


def test_head_bytes_round_trip() -> None:
    raw = b"GET /images/a%20b?x=1&y= HTTP/1.0\r\nRange: bytes=0-1\r\nX-A: \r\n\r\n"
    req = parse_head(raw)
    assert req.path == "/images/a b"
    assert req.query == {"x": "1", "y": ""}
    assert parse_head(req.to_bytes()) == req


def test_percent_escapes_decode_as_utf8() -> None:
    assert parse_head(b"GET /images/%C3%A9 HTTP/1.1\r\n\r\n").path == "/images/\u00e9"


def test_methods_are_tokens_and_case_sensitive() -> None:
    assert parse_head(b"get / HTTP/1.1\r\n\r\n").method == "get"
    assert parse_head(b"M-SEARCH / HTTP/1.1\r\n\r\n").method == "M-SEARCH"


def test_connection_tokens_from_every_line() -> None:
    req = parse_head(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: Close\r\n\r\n")
    assert not req.keep_alive


def test_fields_keep_order_and_compare_names_case_insensitively() -> None:
    fields = Fields((("A", "1"), ("b", "2"), ("a", "3")))
    assert fields.get("a") == "1"
    assert fields.get_all("A") == ["1", "3"]


# Each of these was accepted, repaired or misread by the lenient parser, or
# is a grammar violation RFC 9112 asks a server to refuse.
MALFORMED = [
    # Request line (9112 3).
    (b"GET  /x HTTP/1.1\r\n\r\n", "request line"),
    (b"GET /x  HTTP/1.1\r\n\r\n", "request line"),
    (b"GET /x HTTP/1.1 \r\n\r\n", "request line"),
    (b" GET /x HTTP/1.1\r\n\r\n", "request line"),
    (b"GET\t/x HTTP/1.1\r\n\r\n", "request line"),
    (b"GET /x http/1.1\r\n\r\n", "request line"),
    (b"GET /x HTTP/1.2\r\n\r\n", "request line"),
    (b"GET /x HTTP/2\r\n\r\n", "request line"),
    (b"GET /x\r\n\r\n", "request line"),
    (b"G(T /x HTTP/1.1\r\n\r\n", "request line"),
    (b"G\xc9T /x HTTP/1.1\r\n\r\n", "request line"),
    (b"\r\n\r\n", "request line"),
    # Target (9112 3.2): origin-form, ASCII, valid escapes, UTF-8.
    (b"GET /images/\xff HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/%ff HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/%c3 HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/%zz HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/% HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/%00 HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/a\x00b HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/a#frag HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/a\\b HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /images/<x> HTTP/1.1\r\n\r\n", "request target"),
    (b"GET * HTTP/1.1\r\n\r\n", "request target"),
    (b"GET images HTTP/1.1\r\n\r\n", "request target"),
    (b"GET http://h/x HTTP/1.1\r\n\r\n", "request target"),
    (b"CONNECT h:443 HTTP/1.1\r\n\r\n", "request target"),
    (b"GET /x?a=%ff HTTP/1.1\r\n\r\n", "query"),
    (b"GET /x?a=1&a=2 HTTP/1.1\r\n\r\n", "query parameter 'a'"),
    (b"GET /x?" + b"&".join(b"k%d=1" % i for i in range(40)) + b" HTTP/1.1\r\n\r\n", "query"),
    # Line ends (9112 2.2).
    (b"GET /x HTTP/1.1\nHost: x\r\n\r\n", "request line"),
    (b"GET /x HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", "field line 1"),
    (b"GET /x HTTP/1.1\r\nHost: x\n\r\n", "request head"),
    (b"GET /x HTTP/1.1\r\nHost: a\rb\r\n\r\n", "field line 1"),
    (b"GET /x HTTP/1.1\r\nHost: x\r\n\n", "request head"),
    # Field lines (9112 5).
    (b"GET /x HTTP/1.1\r\nBogus\r\nContent-Length: 5\r\n\r\n", "field line"),
    (b"GET /x HTTP/1.1\r\n: empty-name\r\n\r\n", "field name"),
    (b"GET /x HTTP/1.1\r\nContent-Length : 5\r\n\r\n", "header 'Content-Length'"),
    (b"GET /x HTTP/1.1\r\nContent-Length\t: 5\r\n\r\n", "header 'Content-Length'"),
    (b"GET /x HTTP/1.1\r\nX Y: 5\r\n\r\n", "field name"),
    (b"GET /x HTTP/1.1\r\nX(Y): 5\r\n\r\n", "field name"),
    (b"GET /x HTTP/1.1\r\nX\xc3\xa9: 5\r\n\r\n", "field name"),
    (b"GET /x HTTP/1.1\r\n Host: x\r\n\r\n", "field line"),
    (b"GET /x HTTP/1.1\r\nX-A: 1\r\n  continued\r\n\r\n", "field line"),
    (b"GET /x HTTP/1.1\r\nX-A: 1\r\n\tcontinued\r\n\r\n", "field line"),
    (b"GET /x HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", "header 'X-A'"),
    (b"GET /x HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n", "header 'X-A'"),
    (b"GET /x HTTP/1.1\r\nX-A: \x0ba\r\n\r\n", "header 'X-A'"),
    (b"GET /x HTTP/1.1\r\nX-A: \x0ca\r\n\r\n", "header 'X-A'"),
    (b"GET /x HTTP/1.1\r\nX-A: \xa0a\r\n\r\n", "header 'X-A'"),
    (b"GET /x HTTP/1.1\r\nX-A: a\x85\r\n\r\n", "header 'X-A'"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: \x0b5\r\n\r\n", "header 'Content-Length'"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: \xa05\r\n\r\n", "header 'Content-Length'"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 5\x85\r\n\r\n", "header 'Content-Length'"),
    # Fields we act on come once (9110 5.3).
    (b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", "Content-Length"),
    (b"GET /x HTTP/1.1\r\nRange: bytes=0-1\r\nrange: bytes=0-1\r\n\r\n", "Range"),
    (
        b"PUT /x HTTP/1.1\r\nContent-Range: bytes 0-1/*\r\nContent-Range: bytes 2-3/*\r\n\r\n",
        "Content-Range",
    ),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "Host"),
    (b"GET /x HTTP/1.1\r\nExpect: a\r\nExpect: b\r\n\r\n", "Expect"),
    # Framing (9112 6, 9110 8.6).
    (b"PUT /x HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n", "header 'Content-Length'"),
    ("PUT /x HTTP/1.1\r\nContent-Length: ²\r\n\r\n".encode("latin-1"), "header 'Content-Length'"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: +1\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: \r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", "Content-Length"),
    (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
    (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "Transfer-Encoding"),
    (
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "Transfer-Encoding",
    ),
    (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n", "Transfer-Encoding"),
    (b"PUT /x HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", "Transfer-Encoding"),
    (b"PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
    (
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "Content-Length",
    ),
]


@pytest.mark.parametrize("raw, field", MALFORMED)
def test_malformed_head_is_400_naming_what(raw: bytes, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_head(raw)
    assert e.value.fields["field"] == field


def test_refusal_never_echoes_the_target() -> None:
    # The target holds the ticket id, which is the secret.
    with pytest.raises(BadRequest) as e:
        parse_head(b"GET /images/secret-ticket-id\xff HTTP/1.1\r\n\r\n")
    assert "secret" not in e.value.message


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"Name: value", ("Name", "value")),
        (b"Name:value", ("Name", "value")),
        (b"Name: \t value \t ", ("Name", "value")),
        (b"Name:", ("Name", "")),
        (b"Name: a \t b", ("Name", "a \t b")),
        (b"!#$%&'*+-.^_`|~09az: x", ("!#$%&'*+-.^_`|~09az", "x")),
        (b"Name: a:b", ("Name", "a:b")),
    ],
)
def test_field_line_is_token_colon_ows_value_ows(line: bytes, expected: tuple[str, str]) -> None:
    assert parse_field_line(line) == expected


def test_chunked_and_content_length_values() -> None:
    req = parse_head(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
    assert req.chunked and req.content_length is None
    req = parse_head(b"PUT /x HTTP/1.1\r\nContent-Length: 007\r\n\r\n")
    assert req.content_length == 7 and not req.chunked
    req = parse_head(b"PUT /x HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n")
    assert req.content_length == 2**63 - 1
