"""The standing bad-input corpus of the HTTP data API, against a real daemon.

Every case is bytes sent as they are on a fresh connection, over the unix
socket and over TLS, and asserts the status, whether the connection stays
usable or is closed with nothing after the reply, and (through ``guard``)
that the daemon is alive with no traceback and that no image, unrelated
file or ticket changed unless the case is a valid write. ``{rw}`` and
``{ro}`` stand for the writable and the read-only ticket's ids.

The rules the table follows: a head that breaks the grammar is 400 and
closes (nobody knows where the next request starts); a 403, 411, 413 or
431 closes; a 4xx after a well-formed head keeps the connection when the
body is known and small enough to drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.integration.hostile.corpus import (
    IMAGE_SIZE,
    Guard,
    Scene,
    assert_closed,
    assert_usable,
    exchange,
    pattern,
)

RW = pattern(1)
RO = pattern(2)
SIZE = IMAGE_SIZE
HUGE = b"9" * 5000
OPEN, CLOSE = True, False


@dataclass(frozen=True)
class Case:
    id: str
    raw: bytes
    status: int
    keeps_open: bool
    # A valid write: these bytes at this offset of the writable image.
    write: tuple[int, bytes] | None = None
    # A valid read: the reply's body.
    body: bytes | None = None
    # Text the error reply must contain (the field it names).
    names: bytes | None = None


def request(line: bytes, *fields: bytes, body: bytes = b"", host: bool = True) -> bytes:
    lines = [line, *((b"Host: x",) if host else ()), *fields]
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def get(target: bytes, *fields: bytes) -> bytes:
    return request(b"GET " + target + b" HTTP/1.1", *fields)


def rw_get(*fields: bytes) -> bytes:
    return get(b"/images/{rw}", *fields)


def put(body: bytes, *fields: bytes, target: bytes = b"/images/{rw}") -> bytes:
    length = b"Content-Length: %d" % len(body)
    return request(b"PUT " + target + b" HTTP/1.1", length, *fields, body=body)


def put_head(*fields: bytes, body: bytes = b"", target: bytes = b"/images/{rw}") -> bytes:
    """A PUT with exactly these fields: no Content-Length added."""
    return request(b"PUT " + target + b" HTTP/1.1", *fields, body=body)


def chunked(stream: bytes, *fields: bytes, target: bytes = b"/images/{rw}") -> bytes:
    te = b"Transfer-Encoding: chunked"
    return request(b"PUT " + target + b" HTTP/1.1", te, *fields, body=stream)


def patch(body: bytes, *fields: bytes, target: bytes = b"/images/{rw}") -> bytes:
    length = b"Content-Length: %d" % len(body)
    return request(b"PATCH " + target + b" HTTP/1.1", length, *fields, body=body)


def extents(query: bytes, target: bytes = b"/images/{rw}/extents") -> bytes:
    return get(target + query)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


R01 = b"Range: bytes=0-1"

REQUEST_LINE = [
    Case("double-space-before-target", b"GET  /images/{rw} HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("double-space-before-version", b"GET /images/{rw}  HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("space-after-version", b"GET /images/{rw} HTTP/1.1 \r\n\r\n", 400, CLOSE),
    Case("space-before-method", b" GET /images/{rw} HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("tabs-as-separators", b"GET\t/images/{rw}\tHTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("lower-case-version", b"GET /images/{rw} http/1.1\r\n\r\n", 400, CLOSE),
    Case("version-1.2", b"GET /images/{rw} HTTP/1.2\r\n\r\n", 400, CLOSE),
    Case("version-2.0", b"GET /images/{rw} HTTP/2.0\r\n\r\n", 400, CLOSE),
    Case("version-0.9", b"GET /images/{rw} HTTP/0.9\r\n\r\n", 400, CLOSE),
    Case("no-version", b"GET /images/{rw}\r\n\r\n", 400, CLOSE, names=b"request line"),
    Case("extra-word", b"GET /images/{rw} HTTP/1.1 extra\r\n\r\n", 400, CLOSE),
    Case("method-not-a-token", b"G(T /images/{rw} HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("method-non-ascii", b"G\xc9T /images/{rw} HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("empty-method", b" /images/{rw} HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("no-target", b"GET HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case(
        "bare-lf-line-ends", b"GET /images/{rw} HTTP/1.1\nHost: x\nRange: bytes=0-1\n\n", 400, CLOSE
    ),
    Case("cr-cr-lf", b"GET /images/{rw} HTTP/1.1\r\r\n\r\n", 400, CLOSE),
    Case("nul-after-version", b"GET /images/{rw} HTTP/1.1\x00\r\n\r\n", 400, CLOSE),
    Case("five-empty-lines-first", b"\r\n" * 5 + rw_get(R01), 400, CLOSE),
    Case("two-empty-lines-first", b"\r\n" * 2 + rw_get(R01), 206, OPEN, body=RW[:2]),
    Case("absolute-form", get(b"http://localhost/images/{rw}"), 400, CLOSE),
    Case("authority-form", b"CONNECT localhost:54322 HTTP/1.1\r\n\r\n", 400, CLOSE),
    Case("request-line-over-budget", get(b"/images/" + b"a" * 20000), 431, CLOSE),
    Case("method-over-budget", b"G" * 20000 + b" / HTTP/1.1\r\n\r\n", 431, CLOSE),
    Case(
        "http-1.0-closes",
        request(b"GET /images/{rw} HTTP/1.0", R01),
        206,
        CLOSE,
        body=RW[:2],
    ),
    Case(
        "http-1.0-keep-alive",
        request(b"GET /images/{rw} HTTP/1.0", R01, b"Connection: keep-alive"),
        206,
        OPEN,
        body=RW[:2],
    ),
    Case("nul-line", b"\x00\r\n\r\n", 400, CLOSE),
    Case("tls-hello-on-plain", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, CLOSE),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, CLOSE),
]

TARGET = [
    Case("raw-0xff", get(b"/images/\xff"), 400, CLOSE, names=b"request target"),
    Case("raw-utf8", get(b"/images/\xc3\xa9"), 400, CLOSE),
    Case("escape-not-utf8", get(b"/images/%ff"), 400, CLOSE, names=b"request target"),
    Case("escape-truncated-utf8", get(b"/images/%c3"), 400, CLOSE),
    Case("escape-not-hex", get(b"/images/%zz"), 400, CLOSE),
    Case("lone-percent", get(b"/images/%"), 400, CLOSE),
    Case("escaped-nul", get(b"/images/%00"), 400, CLOSE),
    Case("escaped-nul-after-ticket", get(b"/images/{rw}%00"), 400, CLOSE),
    Case("escaped-newline", get(b"/images/{rw}%0d%0aX:%20y"), 400, CLOSE),
    Case("fragment", get(b"/images/{rw}#x"), 400, CLOSE),
    Case("backslash", get(b"/images/{rw}\\"), 400, CLOSE),
    Case("angle-brackets", get(b"/images/<{rw}>"), 400, CLOSE),
    Case("double-quote", get(b'/images/"{rw}"'), 400, CLOSE),
    Case("pipe", get(b"/images/{rw}|"), 400, CLOSE),
    Case("brace", get(b"/images/{rw}{"), 400, CLOSE),
    Case("caret", get(b"/images/{rw}^"), 400, CLOSE),
    Case("backtick", get(b"/images/{rw}`"), 400, CLOSE),
    Case("square-brackets", get(b"/images/[{rw}]"), 400, CLOSE),
    Case("escaped-utf8-unknown-ticket", get(b"/images/%C3%A9"), 403, CLOSE),
    Case("semicolon-in-ticket", get(b"/images/{rw};x"), 403, CLOSE),
    Case("query-not-utf8", get(b"/images/{rw}?close=%ff"), 400, CLOSE, names=b"query"),
    Case("query-param-twice", get(b"/images/{rw}?close=n&close=y"), 400, CLOSE, names=b"close"),
    Case(
        "query-flood",
        get(b"/images/{rw}?" + b"&".join(b"k%d=1" % i for i in range(100))),
        400,
        CLOSE,
    ),
    Case("bad-close-flag", get(b"/images/{rw}?close=maybe"), 400, OPEN, names=b"close"),
    Case("empty-query", get(b"/images/{rw}?", R01), 206, OPEN, body=RW[:2]),
    Case("close-flag", get(b"/images/{rw}?close=y", R01), 206, CLOSE, body=RW[:2]),
    # Told what is missing, as ovirt-imageio does (400), not "not found".
    Case("no-ticket", get(b"/images/"), 400, OPEN, names=b"ticket id is missing"),
    Case("no-ticket-extents", get(b"/images//extents"), 400, OPEN, names=b"ticket id"),
    Case("no-slash", get(b"/images"), 404, OPEN),
    Case("unknown-resource", get(b"/nothing"), 404, OPEN),
    Case("ticket-api-on-data-socket", get(b"/tickets/{rw}"), 404, OPEN),
    Case("below-ticket", get(b"/images/{rw}/nothing"), 404, OPEN),
    Case("below-extents", get(b"/images/{rw}/extents/more"), 404, OPEN),
    Case("dot-dot", get(b"/images/{rw}/../{ro}"), 404, OPEN),
    Case("double-slash", get(b"//images/{rw}"), 404, OPEN),
    Case("info-query-not-utf8", get(b"/info/?x=%ff"), 400, CLOSE),
    Case("get-on-star", get(b"/images/*"), 405, OPEN),
]

FIELDS = [
    Case(
        "no-colon-hides-content-length",
        put_head(
            b"X-No-Colon",
            b"Content-Length: 31",
            body=b"GET /images/{rw} HTTP/1.1\r\n\r\n\r\n",
        ),
        400,
        CLOSE,
        names=b"colon",
    ),
    Case(
        "space-before-colon",
        put_head(b"Content-Length : 5", body=b"hello"),
        400,
        CLOSE,
        names=b"Content-Length",
    ),
    Case("tab-before-colon", put_head(b"Content-Length\t: 5", body=b"hello"), 400, CLOSE),
    Case("obs-fold", rw_get(R01, b"X-A: 1", b" folded"), 400, CLOSE, names=b"obs-fold"),
    Case("obs-fold-of-length", put_head(b"Content-Length:", b" 5", body=b"hello"), 400, CLOSE),
    Case("tab-fold", rw_get(R01, b"X-A: 1", b"\tfolded"), 400, CLOSE),
    Case(
        "space-before-first-field",
        b"GET /images/{rw} HTTP/1.1\r\n Host: x\r\n\r\n",
        400,
        CLOSE,
    ),
    Case("name-with-paren", rw_get(b"X(A): 1"), 400, CLOSE),
    Case("name-with-at", rw_get(b"X@A: 1"), 400, CLOSE),
    Case("name-non-ascii", rw_get(b"X\xc3\xa9: 1"), 400, CLOSE),
    Case("empty-name", rw_get(b": nothing"), 400, CLOSE),
    Case("name-with-space", put_head(b"Content Length: 5", body=b"hello"), 400, CLOSE),
    Case("vt-before-value", rw_get(b"X-A: \x0b1"), 400, CLOSE),
    Case("ff-after-value", rw_get(b"X-A: 1\x0c"), 400, CLOSE),
    Case("nbsp-before-value", rw_get(b"X-A: \xa01"), 400, CLOSE),
    Case("nel-after-value", rw_get(b"X-A: 1\x85"), 400, CLOSE),
    Case("vt-before-length", put_head(b"Content-Length: \x0b5", body=b"hello"), 400, CLOSE),
    Case("nbsp-before-length", put_head(b"Content-Length: \xa05", body=b"hello"), 400, CLOSE),
    Case("nel-after-length", put_head(b"Content-Length: 5\x85", body=b"hello"), 400, CLOSE),
    Case("nbsp-before-range", rw_get(b"Range: \xa0bytes=0-1"), 400, CLOSE),
    Case("nul-in-value", rw_get(b"X-A: a\x00b"), 400, CLOSE),
    Case("del-in-value", rw_get(b"X-A: a\x7fb"), 400, CLOSE),
    Case("bare-cr-in-value", rw_get(b"X-A: a\rb"), 400, CLOSE),
    Case("bare-lf-ends-a-field", rw_get(b"X-A: 1\nX-B: 2"), 400, CLOSE),
    Case("cr-cr-lf-ends-a-field", rw_get(b"X-A: 1\r"), 400, CLOSE),
    Case("utf8-value", rw_get(b"X-A: \xc3\xa9"), 400, CLOSE),
    Case("host-twice", rw_get(b"Host: y"), 400, CLOSE, names=b"Host"),
    Case("range-twice", rw_get(R01, b"Range: bytes=5-6"), 400, CLOSE, names=b"Range"),
    Case("range-twice-other-case", rw_get(R01, b"range: bytes=0-1"), 400, CLOSE),
    Case(
        "content-range-twice",
        put(b"hello", b"Content-Range: bytes 0-4/*", b"Content-Range: bytes 5-9/*"),
        400,
        CLOSE,
        names=b"Content-Range",
    ),
    Case(
        "content-type-twice",
        patch(b'{"op": "flush"}', b"Content-Type: application/json", b"Content-Type: text/plain"),
        400,
        CLOSE,
    ),
    Case("expect-twice", put(b"hello", b"Expect: 100-continue", b"Expect: x"), 400, CLOSE),
    Case("origin-twice", rw_get(R01, b"Origin: https://a", b"Origin: https://b"), 400, CLOSE),
    Case(
        "header-flood",
        rw_get(*(b"X-Flood-%d: %s" % (i, b"y" * 50) for i in range(1000))),
        431,
        CLOSE,
    ),
    Case("one-huge-header", rw_get(b"X-Huge: " + b"y" * 100_000), 431, CLOSE),
    Case(
        "many-headers-below-limit",
        rw_get(R01, *(b"X-Extra-%d: %s" % (i, b"y" * 100) for i in range(90))),
        206,
        OPEN,
        body=RW[:2],
    ),
    Case("name-case-insensitive", rw_get(b"rAnGe: bytes=0-1"), 206, OPEN, body=RW[:2]),
    Case("no-ows", rw_get(b"Range:bytes=0-1"), 206, OPEN, body=RW[:2]),
    Case("ows-around-value", rw_get(b"Range: \t bytes=0-1 \t "), 206, OPEN, body=RW[:2]),
    Case("empty-value", rw_get(R01, b"X-Empty:"), 206, OPEN, body=RW[:2]),
    Case("no-host", request(b"GET /images/{rw} HTTP/1.1", R01, host=False), 206, OPEN),
    Case("connection-close", rw_get(R01, b"Connection: close"), 206, CLOSE, body=RW[:2]),
    Case("repeated-free-field", rw_get(R01, b"X-A: 1", b"X-A: 2", b"x-a: 3"), 206, OPEN),
]

FRAMING = [
    Case(
        "length-superscript-two",
        put_head("Content-Length: \u00b2".encode(), body=b"he"),
        400,
        CLOSE,
        names=b"Content-Length",
    ),
    Case("length-arabic-digit", put_head("Content-Length: \u0663".encode()), 400, CLOSE),
    Case("length-fullwidth-digit", put_head("Content-Length: \uff15".encode()), 400, CLOSE),
    Case("length-plus", put_head(b"Content-Length: +5", body=b"hello"), 400, CLOSE),
    Case("length-negative", put_head(b"Content-Length: -1"), 400, CLOSE),
    Case("length-two-numbers", put_head(b"Content-Length: 5 5", body=b"hello"), 400, CLOSE),
    Case("length-list", put_head(b"Content-Length: 5,5", body=b"hello"), 400, CLOSE),
    Case("length-list-ows", put_head(b"Content-Length: 5, 5", body=b"hello"), 400, CLOSE),
    Case("length-hex", put_head(b"Content-Length: 0x5", body=b"hello"), 400, CLOSE),
    Case("length-empty", put_head(b"Content-Length:", body=b"hello"), 400, CLOSE),
    Case("length-exponent", put_head(b"Content-Length: 5e0", body=b"hello"), 400, CLOSE),
    Case("length-20-digits", put_head(b"Content-Length: " + b"1" * 20), 400, CLOSE),
    Case("length-5000-digits", put_head(b"Content-Length: " + HUGE), 400, CLOSE),
    Case("length-2-pow-63", put_head(b"Content-Length: 9223372036854775808"), 400, CLOSE),
    Case("length-2-pow-63-minus-1", put_head(b"Content-Length: 9223372036854775807"), 416, CLOSE),
    Case("length-past-image", put_head(b"Content-Length: %d" % (SIZE + 1)), 416, CLOSE),
    Case(
        "length-and-chunked",
        put_head(
            b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"
        ),
        400,
        CLOSE,
        names=b"Content-Length",
    ),
    Case("coding-gzip", put_head(b"Transfer-Encoding: gzip"), 400, CLOSE),
    Case("coding-gzip-chunked", put_head(b"Transfer-Encoding: gzip, chunked"), 400, CLOSE),
    Case("coding-chunked-gzip", put_head(b"Transfer-Encoding: chunked, gzip"), 400, CLOSE),
    Case("coding-identity", put_head(b"Transfer-Encoding: identity"), 400, CLOSE),
    Case(
        "coding-chunked-twice",
        put_head(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        400,
        CLOSE,
    ),
    Case("coding-trailing-comma", put_head(b"Transfer-Encoding: chunked,"), 400, CLOSE),
    Case(
        "chunked-in-http-1.0",
        request(b"PUT /images/{rw} HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
        CLOSE,
        names=b"Transfer-Encoding",
    ),
    Case("no-length", put_head(), 411, CLOSE),
    Case("no-length-body-anyway", put_head(body=b"GET / HTTP/1.1\r\n\r\n"), 411, CLOSE),
    Case("length-valid", put(b"hello"), 200, OPEN, write=(0, b"hello")),
    Case(
        "length-leading-zeros",
        put_head(b"Content-Length: 005", body=b"hello"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case(
        "length-trailing-ows",
        put_head(b"Content-Length: 5 ", body=b"hello"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case("length-zero", put(b""), 200, OPEN),
    Case(
        "coding-case-insensitive",
        put_head(b"Transfer-Encoding: Chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
]

CHUNKED = [
    Case("chunked-valid", chunked(b"5\r\nhello\r\n0\r\n\r\n"), 200, OPEN, write=(0, b"hello")),
    Case(
        "chunked-extension",
        chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case(
        "chunked-quoted-extension",
        chunked(b'5 ; a = "x;\\"y" ; b\r\nhello\r\n0\r\n\r\n'),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case(
        "chunked-trailer",
        chunked(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case(
        "chunked-upper-hex",
        chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
        200,
        OPEN,
        write=(0, b"0123456789"),
    ),
    Case(
        "chunked-several",
        chunked(b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case(
        "chunked-with-content-range",
        chunked(b"5\r\nhello\r\n0\r\n\r\n", b"Content-Range: bytes 100-104/*"),
        200,
        OPEN,
        write=(100, b"hello"),
    ),
    Case(
        "chunked-not-hex",
        chunked(b"zz\r\nhello\r\n0\r\n\r\n"),
        400,
        CLOSE,
        names=b"chunked body",
    ),
    Case("chunked-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-space-before-size", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-space-after-size", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-bare-lf-size-line", chunked(b"5\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-data-without-crlf", chunked(b"5\r\nhello\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-data-longer-than-size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-huge-line", chunked(b"5;" + b"a" * 2000 + b"\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-17-hex-digits", chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-size-2-pow-63", chunked(b"8000000000000000\r\nhello\r\n"), 400, CLOSE),
    Case("chunked-empty-extension", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-nul-in-extension", chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n"), 400, CLOSE),
    Case("chunked-unterminated-quote", chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), 400, CLOSE),
    Case("chunked-arabic-digit", chunked("\u0665\r\nhello\r\n0\r\n\r\n".encode()), 400, CLOSE),
    Case("trailer-space-before-colon", chunked(b"5\r\nhello\r\n0\r\nX-A : 1\r\n\r\n"), 400, CLOSE),
    Case("trailer-obs-fold", chunked(b"5\r\nhello\r\n0\r\nX-A: 1\r\n folded\r\n\r\n"), 400, CLOSE),
    Case("trailer-no-colon", chunked(b"5\r\nhello\r\n0\r\nX-A\r\n\r\n"), 400, CLOSE),
    Case("trailer-bare-lf", chunked(b"5\r\nhello\r\n0\r\nX-A: 1\n\r\n"), 400, CLOSE),
    Case(
        "trailer-flood",
        chunked(b"5\r\nhello\r\n0\r\n" + b"X-A: 1\r\n" * 70 + b"\r\n"),
        400,
        CLOSE,
    ),
    Case(
        "chunked-longer-than-content-range",
        chunked(b"a\r\n0123456789\r\n0\r\n\r\n", b"Content-Range: bytes 0-4/*"),
        400,
        CLOSE,
        names=b"Content-Range",
    ),
    Case(
        "chunked-on-read-only",
        chunked(b"5\r\nhello\r\n0\r\n\r\n", target=b"/images/{ro}"),
        403,
        CLOSE,
    ),
]

RANGE = [
    Case("range-first-bytes", rw_get(R01), 206, OPEN, body=RW[:2]),
    Case("range-open-ended", rw_get(b"Range: bytes=%d-" % (SIZE - 3)), 206, OPEN, body=RW[-3:]),
    Case("range-suffix", rw_get(b"Range: bytes=-2"), 206, OPEN, body=RW[-2:]),
    Case(
        "range-last-past-end",
        rw_get(b"Range: bytes=%d-99999999" % (SIZE - 6)),
        206,
        OPEN,
        body=RW[-6:],
    ),
    Case(
        "range-last-5000-digits",
        rw_get(b"Range: bytes=%d-%s" % (SIZE - 6, HUGE)),
        206,
        OPEN,
        body=RW[-6:],
    ),
    Case("range-suffix-5000-digits", rw_get(b"Range: bytes=-" + HUGE), 206, OPEN, body=RW),
    Case("range-unit-case", rw_get(b"Range: Bytes=0-1"), 206, OPEN, body=RW[:2]),
    Case(
        "range-leading-zeros",
        rw_get(b"Range: bytes=" + b"0" * 30 + b"1-2"),
        206,
        OPEN,
        body=RW[1:3],
    ),
    Case("range-read-only-ticket", get(b"/images/{ro}", R01), 206, OPEN, body=RO[:2]),
    Case("range-at-end", rw_get(b"Range: bytes=%d-" % SIZE), 416, OPEN),
    Case("range-first-5000-digits", rw_get(b"Range: bytes=" + HUGE + b"-"), 416, OPEN),
    Case("range-zero-suffix", rw_get(b"Range: bytes=-0"), 416, OPEN),
    Case("range-past-2-pow-64", rw_get(b"Range: bytes=%d-%d" % (2**64, 2**64)), 416, OPEN),
    Case("range-letters", rw_get(b"Range: bytes=abc"), 400, OPEN, names=b"Range"),
    Case("range-multiple", rw_get(b"Range: bytes=0-1,5-6"), 400, OPEN, names=b"Range"),
    Case("range-backwards", rw_get(b"Range: bytes=9-1"), 400, OPEN),
    Case("range-backwards-huge", rw_get(b"Range: bytes=" + HUGE + b"-1"), 400, OPEN),
    Case("range-other-unit", rw_get(b"Range: pages=0-1"), 400, OPEN),
    Case("range-no-equals", rw_get(b"Range: bytes 0-1"), 400, OPEN),
    Case("range-empty-set", rw_get(b"Range: bytes="), 400, OPEN),
    Case("range-dash-only", rw_get(b"Range: bytes=-"), 400, OPEN),
    Case("range-double-dash", rw_get(b"Range: bytes=--1"), 400, OPEN),
    Case("range-three-numbers", rw_get(b"Range: bytes=1-2-3"), 400, OPEN),
    Case("range-spaces-around-equals", rw_get(b"Range: bytes = 0-1"), 400, OPEN),
    Case("range-space-inside", rw_get(b"Range: bytes=0 -1"), 400, OPEN),
    Case("range-plus", rw_get(b"Range: bytes=+0-1"), 400, OPEN),
    Case("range-hex", rw_get(b"Range: bytes=0x0-1"), 400, OPEN),
    Case("range-arabic-digits", rw_get("Range: bytes=\u0660-\u0663".encode()), 400, CLOSE),
    Case("range-superscript", rw_get("Range: bytes=\u00b2-".encode()), 400, CLOSE),
]

CONTENT_RANGE = [
    Case(
        "content-range-longer-than-body",
        put(b"hello", b"Content-Range: bytes 0-9/*"),
        400,
        OPEN,
        names=b"Content-Range",
    ),
    Case("content-range-backwards", put(b"hello", b"Content-Range: bytes 9-0/*"), 400, OPEN),
    Case("content-range-equals", put(b"hello", b"Content-Range: bytes=0-4"), 400, OPEN),
    Case("content-range-no-length", put(b"hello", b"Content-Range: bytes 0-4"), 400, OPEN),
    Case(
        "content-range-unsatisfied", put(b"hello", b"Content-Range: bytes */%d" % SIZE), 400, OPEN
    ),
    Case("content-range-past-total", put(b"hello", b"Content-Range: bytes 0-4/3"), 400, OPEN),
    Case("content-range-negative", put(b"hello", b"Content-Range: bytes -1-3/*"), 400, OPEN),
    Case("content-range-empty-total", put(b"hello", b"Content-Range: bytes 0-4/"), 400, OPEN),
    Case("content-range-junk-total", put(b"hello", b"Content-Range: bytes 0-4/*x"), 400, OPEN),
    Case("content-range-two-spaces", put(b"hello", b"Content-Range: bytes  0-4/*"), 400, OPEN),
    Case("content-range-spaced-dash", put(b"hello", b"Content-Range: bytes 0 - 4/*"), 400, OPEN),
    Case(
        "content-range-length-mismatch",
        put(b"abc", b"Content-Range: bytes 0-4/*"),
        400,
        OPEN,
        names=b"Content-Range",
    ),
    Case(
        "content-range-arabic-digits",
        put(b"hello", "Content-Range: bytes \u0660-\u0664/*".encode()),
        400,
        CLOSE,
    ),
    Case(
        "content-range-start-5000-digits",
        put(b"x", b"Content-Range: bytes " + HUGE + b"-" + HUGE + b"/*"),
        416,
        OPEN,
    ),
    Case(
        "content-range-start-2-pow-64",
        put(b"x", b"Content-Range: bytes %d-%d/*" % (2**64, 2**64)),
        416,
        OPEN,
    ),
    Case(
        "content-range-start-2-pow-63-minus-1",
        put(b"x", b"Content-Range: bytes %d-%d/*" % (2**63 - 1, 2**63 - 1)),
        416,
        OPEN,
    ),
    Case(
        "content-range-past-end",
        put(b"xy", b"Content-Range: bytes %d-%d/*" % (SIZE - 1, SIZE)),
        416,
        OPEN,
    ),
    Case(
        "content-range-valid",
        put(b"hello", b"Content-Range: bytes 0-4/*"),
        200,
        OPEN,
        write=(0, b"hello"),
    ),
    Case(
        "content-range-with-total",
        put(b"hello", b"Content-Range: bytes 10-14/%d" % SIZE),
        200,
        OPEN,
        write=(10, b"hello"),
    ),
    Case(
        "content-range-unit-case",
        put(b"hello", b"Content-Range: BYTES 20-24/*"),
        200,
        OPEN,
        write=(20, b"hello"),
    ),
    Case(
        "content-range-at-end",
        put(b"hello", b"Content-Range: bytes %d-%d/*" % (SIZE - 5, SIZE - 1)),
        200,
        OPEN,
        write=(SIZE - 5, b"hello"),
    ),
    Case(
        "content-range-read-only",
        put(b"hello", b"Content-Range: bytes 0-4/*", target=b"/images/{ro}"),
        403,
        CLOSE,
    ),
    Case(
        "content-range-unknown-ticket",
        put(b"hello", b"Content-Range: bytes 0-4/*", target=b"/images/nope"),
        403,
        CLOSE,
    ),
]

PATCH_JSON = [
    Case("json-2000-arrays", patch(nested(2000)), 400, OPEN, names=b"JSON body"),
    Case("json-800-objects", patch(b'{"":' * 800 + b"1" + b"}" * 800), 400, OPEN),
    Case("json-33-levels-in-op", patch(b'{"op": "flush", "x": ' + nested(33) + b"}"), 400, OPEN),
    Case("json-30000-arrays", patch(nested(30000)), 413, CLOSE),
    Case(
        "json-nested-chunked",
        request(
            b"PATCH /images/{rw} HTTP/1.1",
            b"Transfer-Encoding: chunked",
            body=b"%x\r\n%s\r\n0\r\n\r\n" % (1000, nested(500)),
        ),
        400,
        OPEN,
    ),
    Case(
        "json-chunked-malformed",
        request(
            b"PATCH /images/{rw} HTTP/1.1",
            b"Transfer-Encoding: chunked",
            body=b"5\r\n{}   \r\nzz\r\n",
        ),
        400,
        CLOSE,
        names=b"chunked body",
    ),
    Case("json-not-json", patch(b"not json"), 400, OPEN, names=b"JSON body"),
    Case("json-array", patch(b"[]"), 400, OPEN),
    Case("json-string", patch(b'"zero"'), 400, OPEN),
    Case("json-empty-object", patch(b"{}"), 400, OPEN, names=b"op"),
    Case("json-unknown-op", patch(b'{"op": "erase"}'), 400, OPEN),
    Case("json-op-not-string", patch(b'{"op": ["zero"]}'), 400, OPEN),
    Case("zero-without-size", patch(b'{"op": "zero"}'), 400, OPEN, names=b"size"),
    Case("zero-negative-size", patch(b'{"op": "zero", "size": -1}'), 400, OPEN),
    Case("zero-size-string", patch(b'{"op": "zero", "size": "5"}'), 400, OPEN),
    Case("zero-size-float", patch(b'{"op": "zero", "size": 1.5}'), 400, OPEN),
    Case("zero-size-bool", patch(b'{"op": "zero", "size": true}'), 400, OPEN),
    Case("zero-size-null", patch(b'{"op": "zero", "size": null}'), 400, OPEN),
    Case("zero-size-nan", patch(b'{"op": "zero", "size": NaN}'), 400, OPEN),
    Case("zero-size-infinity", patch(b'{"op": "zero", "size": Infinity}'), 400, OPEN),
    Case("zero-size-1e30", patch(b'{"op": "zero", "size": 1e30}'), 400, OPEN),
    Case("zero-size-10-pow-30", patch(b'{"op": "zero", "size": 1%s}' % (b"0" * 30)), 416, OPEN),
    Case("zero-size-4000-digits", patch(b'{"op": "zero", "size": %s}' % HUGE[:4000]), 416, OPEN),
    Case("zero-offset-negative", patch(b'{"op": "zero", "offset": -1, "size": 1}'), 400, OPEN),
    Case(
        "zero-offset-10-pow-30",
        patch(b'{"op": "zero", "offset": 1%s, "size": 1}' % (b"0" * 30)),
        416,
        OPEN,
    ),
    Case(
        "zero-past-end",
        patch(b'{"op": "zero", "offset": %d, "size": 1}' % SIZE),
        416,
        OPEN,
    ),
    Case("zero-flush-string", patch(b'{"op": "zero", "size": 1, "flush": "yes"}'), 400, OPEN),
    Case("json-not-utf8", patch(b'{"op": "\xff"}'), 400, OPEN),
    Case("json-nul", patch(b"\x00"), 400, OPEN),
    Case("json-empty-body", patch(b""), 400, OPEN),
    Case(
        "json-no-length",
        request(b"PATCH /images/{rw} HTTP/1.1"),
        400,
        OPEN,
    ),
    Case("json-text-plain", patch(b'{"op": "flush"}', b"Content-Type: text/plain"), 415, OPEN),
    Case("json-too-big", patch(b" " * 5000 + b'{"op": "flush"}'), 413, CLOSE),
    Case(
        "json-too-big-unsent",
        request(b"PATCH /images/{rw} HTTP/1.1", b"Content-Length: 10000000"),
        413,
        CLOSE,
    ),
    Case("patch-read-only", patch(b'{"op": "flush"}', target=b"/images/{ro}"), 403, CLOSE),
    Case("flush", patch(b'{"op": "flush"}'), 200, OPEN),
    Case(
        "flush-json-charset",
        patch(b'{"op": "flush"}', b"Content-Type: application/json; charset=utf-8"),
        200,
        OPEN,
    ),
    Case("duplicate-keys-last-wins", patch(b'{"op": "zero", "op": "flush"}'), 200, OPEN),
    Case(
        "zero-aligned",
        patch(b'{"op": "zero", "offset": 4096, "size": 4096}'),
        200,
        OPEN,
        write=(4096, b"\0" * 4096),
    ),
    Case(
        "zero-unaligned",
        patch(b'{"op": "zero", "offset": 100, "size": 50, "flush": true}'),
        200,
        OPEN,
        write=(100, b"\0" * 50),
    ),
]

EXTENTS = [
    Case("extents", extents(b""), 200, OPEN),
    Case("extents-window", extents(b"?context=zero&start=0&length=4096"), 200, OPEN),
    Case("extents-read-only", extents(b"", target=b"/images/{ro}/extents"), 200, OPEN),
    Case("extents-superscript-start", extents(b"?start=%C2%B2"), 400, OPEN, names=b"start"),
    Case("extents-raw-superscript", extents("?start=\u00b2".encode()), 400, CLOSE),
    Case("extents-start-5000-digits", extents(b"?start=" + HUGE), 400, OPEN, names=b"start"),
    Case("extents-length-5000-digits", extents(b"?length=" + HUGE), 400, OPEN, names=b"length"),
    Case("extents-start-negative", extents(b"?start=-1"), 400, OPEN),
    Case("extents-start-float", extents(b"?start=1.5"), 400, OPEN),
    Case("extents-start-empty", extents(b"?start="), 400, OPEN),
    Case("extents-start-hex", extents(b"?start=0x10"), 400, OPEN),
    Case("extents-start-plus", extents(b"?start=%2B1"), 400, OPEN),
    Case("extents-start-space", extents(b"?start=%201"), 400, OPEN),
    Case("extents-start-arabic", extents(b"?start=%D9%A3"), 400, OPEN),
    Case("extents-length-letters", extents(b"?length=abc"), 400, OPEN),
    Case("extents-start-2-pow-63", extents(b"?start=%d" % 2**63), 400, OPEN),
    Case("extents-bad-context", extents(b"?context=bogus"), 400, OPEN, names=b"context"),
    Case("extents-dirty-not-allowed", extents(b"?context=dirty"), 404, OPEN),
    Case("extents-start-past-end", extents(b"?start=%d" % (SIZE + 1)), 416, OPEN),
    Case("extents-length-past-end", extents(b"?start=0&length=%d" % (2**63 - 1)), 416, OPEN),
    Case("extents-start-twice", extents(b"?start=0&start=1"), 400, CLOSE),
    Case("extents-unknown-ticket", extents(b"", target=b"/images/nope/extents"), 403, CLOSE),
    Case("extents-put", put(b"hello", target=b"/images/{rw}/extents"), 405, OPEN),
]

OPTIONS = [
    Case("options-star", request(b"OPTIONS /images/* HTTP/1.1"), 200, OPEN),
    Case("options-writable", request(b"OPTIONS /images/{rw} HTTP/1.1"), 200, OPEN),
    Case("options-read-only", request(b"OPTIONS /images/{ro} HTTP/1.1"), 200, OPEN),
    Case("options-unknown-ticket", request(b"OPTIONS /images/nope HTTP/1.1"), 403, CLOSE),
    Case("options-asterisk-form", request(b"OPTIONS * HTTP/1.1"), 400, CLOSE),
    Case(
        "options-with-body",
        request(b"OPTIONS /images/{rw} HTTP/1.1", b"Content-Length: 5", body=b"hello"),
        200,
        OPEN,
    ),
    Case(
        "options-with-chunked-body",
        request(
            b"OPTIONS /images/{rw} HTTP/1.1",
            b"Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0\r\n\r\n",
        ),
        200,
        OPEN,
    ),
    Case(
        "options-preflight",
        request(
            b"OPTIONS /images/{rw} HTTP/1.1",
            b"Origin: https://engine",
            b"Access-Control-Request-Method: PUT",
        ),
        200,
        OPEN,
    ),
    Case(
        "options-preflight-twice",
        request(
            b"OPTIONS /images/{rw} HTTP/1.1",
            b"Access-Control-Request-Method: PUT",
            b"Access-Control-Request-Method: GET",
        ),
        400,
        CLOSE,
    ),
    Case("options-extents", request(b"OPTIONS /images/{rw}/extents HTTP/1.1"), 405, OPEN),
    Case("options-escaped-nul", request(b"OPTIONS /images/%00 HTTP/1.1"), 400, CLOSE),
]

METHODS = [
    Case("delete", request(b"DELETE /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("head", request(b"HEAD /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("trace", request(b"TRACE /images/{rw} HTTP/1.1"), 405, OPEN),
    Case(
        "post-with-body",
        request(b"POST /images/{rw} HTTP/1.1", b"Content-Length: 5", body=b"hello"),
        405,
        OPEN,
    ),
    Case("connect-origin-form", request(b"CONNECT /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("propfind", request(b"PROPFIND /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("m-search", request(b"M-SEARCH /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("lower-case-get", request(b"get /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("long-token-method", request(b"X" * 100 + b" /images/{rw} HTTP/1.1"), 405, OPEN),
    Case("put-on-star", put(b"hello", target=b"/images/*"), 405, OPEN),
    Case("delete-info", request(b"DELETE /info/ HTTP/1.1"), 405, OPEN),
    Case("put-read-only", put(b"hello", target=b"/images/{ro}"), 403, CLOSE),
    Case("get-unknown-ticket", get(b"/images/nope"), 403, CLOSE),
    Case(
        "refused-put-with-expect",
        put_head(b"Content-Length: 5", b"Expect: 100-continue", target=b"/images/nope"),
        403,
        CLOSE,
    ),
]

CASES = (
    REQUEST_LINE
    + TARGET
    + FIELDS
    + FRAMING
    + CHUNKED
    + RANGE
    + CONTENT_RANGE
    + PATCH_JSON
    + EXTENTS
    + OPTIONS
    + METHODS
)


def test_corpus_is_large_and_named_uniquely() -> None:
    assert len(CASES) >= 170
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("transport", ["unix", "tls"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(scene: Scene, guard: Guard, case: Case, transport: str) -> None:
    if case.write is not None:
        guard.expect_write(*case.write)
    sock = scene.connect(transport)
    try:
        reply = exchange(sock, scene.fill(case.raw))
        assert reply.status == case.status, reply.body
        if case.body is not None:
            assert reply.body == case.body
        if case.status >= 400:
            assert (reply.header("Content-Type") or "").startswith("text/plain")
            # One line, and never the secret; a reply to HEAD has none.
            head = case.raw.startswith(b"HEAD ")
            assert reply.body.count(b"\n") == (0 if head else 1)
            assert scene.writable.ticket_id.encode() not in reply.body
            assert scene.readonly.ticket_id.encode() not in reply.body
        if case.names is not None:
            assert case.names in reply.body
        if case.status == 416:
            assert reply.header("Content-Range") == f"bytes */{SIZE}"
        if case.keeps_open:
            assert reply.header("Connection") != "close"
            assert_usable(sock, scene)
        else:
            assert_closed(sock)
    finally:
        sock.close()
