"""Request heads and bodies of HTTP/1.1 (RFC 7230), read strictly.

The head is read line by line against a byte budget, so a header flood
costs at most ``max_header_bytes`` before it is refused with 431; the
header fields themselves are parsed by the standard library. Bodies are
either ``Content-Length`` or ``chunked`` (section 3.3.3: both at once is an
error, not a choice).
"""

from __future__ import annotations

import http.client
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    PeerClosed,
    UnsupportedMediaType,
)

_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) HTTP/(1\.[01])\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;[^\r\n]*)?\r?\n")
# Leading empty lines before a request line may be ignored (section 3.5).
_MAX_EMPTY_LINES = 4


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: http.client.HTTPMessage
    path: str
    query: dict[str, str]
    content_length: int | None
    chunked: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("Connection") or "").split(",")}
        if self.version == "1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def expects_continue(self) -> bool:
        """RFC 7231 section 5.1.1: the client waits for 100 before the body."""
        expect = (self.header("Expect") or "").strip().lower()
        return self.version == "1.1" and expect == "100-continue" and self.has_body


def read_head(rfile: Any, limit: int) -> Request | None:
    """The next request head, or None if the peer closed between requests."""
    budget = limit
    line = b""
    for _ in range(_MAX_EMPTY_LINES + 1):
        got = _readline(rfile, budget)
        if got is None:
            return None
        line = got
        budget -= len(line)
        if line not in (b"\r\n", b"\n"):
            break
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise BadRequest(field="request line", reason="malformed")
    lines = []
    while True:
        field_line = _readline(rfile, budget)
        if field_line is None:
            raise PeerClosed(reason="connection closed inside the request head")
        budget -= len(field_line)
        lines.append(field_line)
        if field_line in (b"\r\n", b"\n"):
            break
    try:
        headers = http.client.parse_headers(io.BytesIO(b"".join(lines)))
    except http.client.HTTPException as e:
        raise HeadersTooLarge(reason=f"Request header fields too large: {e}") from None
    method, target, version = (g.decode("ascii") for g in m.groups())
    return _request(method, target, version, headers)


def _readline(rfile: Any, budget: int) -> bytes | None:
    if budget <= 0:
        raise HeadersTooLarge(reason="Request header fields too large")
    line: bytes = rfile.readline(budget + 1)
    if not line:
        return None
    if len(line) > budget or not line.endswith(b"\n"):
        if len(line) <= budget:
            raise PeerClosed(reason="connection closed inside the request head")
        raise HeadersTooLarge(reason="Request header fields too large")
    return line


def _request(method: str, target: str, version: str, headers: http.client.HTTPMessage) -> Request:
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        raise BadRequest(field="request target", reason="expected an absolute path")
    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError as e:
        raise BadRequest(field="query", reason=str(e)) from None
    for key, value in pairs:
        if key in query:
            raise BadRequest(field=f"query parameter {key!r}", reason="given twice")
        query[key] = value
    chunked = _chunked(headers)
    length = _content_length(headers)
    if chunked and length is not None:
        raise BadRequest(
            field="Content-Length", reason="not allowed with Transfer-Encoding: chunked"
        )
    return Request(
        method=method,
        target=target,
        version=version,
        headers=headers,
        path=unquote(parts.path),
        query=query,
        content_length=length,
        chunked=chunked,
    )


def _content_length(headers: http.client.HTTPMessage) -> int | None:
    values = headers.get_all("Content-Length") or []
    if not values:
        return None
    distinct = {v.strip() for value in values for v in value.split(",")}
    if len(distinct) != 1:
        raise BadRequest(field="Content-Length", reason="conflicting values")
    value = distinct.pop()
    if not value.isdigit() or len(value) > 19:
        raise BadRequest(field="Content-Length", reason=f"invalid value {value!r}")
    return int(value)


def _chunked(headers: http.client.HTTPMessage) -> bool:
    values = headers.get_all("Transfer-Encoding") or []
    codings = [c.strip().lower() for v in values for c in v.split(",") if c.strip()]
    if not codings:
        return False
    if codings != ["chunked"]:
        raise BadRequest(
            field="Transfer-Encoding", reason=f"unsupported coding {', '.join(codings)!r}"
        )
    return True


class Body:
    """The body of one request; reads never cross into the next request."""

    def __init__(
        self,
        rfile: Any,
        request: Request,
        on_error: Callable[[OSError], Exception],
        on_continue: Callable[[], None] | None = None,
    ) -> None:
        self._rfile = rfile
        self._chunked = request.chunked
        self._left = request.content_length or 0
        self._chunk_left = 0
        self._done = not request.has_body
        self._on_error = on_error
        # The interim 100 goes out when a handler first reads: by then the
        # request was authorized and checked, and a refused request gets its
        # final status without the client ever sending the body.
        self._on_continue = on_continue if request.expects_continue else None

    @property
    def done(self) -> bool:
        return self._done

    @property
    def awaiting_continue(self) -> bool:
        """The client may be holding the body back until it gets a 100."""
        return self._on_continue is not None

    @property
    def left(self) -> int | None:
        """Bytes not read yet; None for a chunked body (unknown)."""
        if self._done:
            return 0
        return None if self._chunked else self._left

    def readinto(self, buf: memoryview) -> int:
        """Fill buf as far as the body goes; 0 only at the end of the body."""
        if self._on_continue is not None:
            send_continue, self._on_continue = self._on_continue, None
            send_continue()
        filled = 0
        while filled < len(buf) and not self._done:
            n = self._read_some(buf[filled:])
            filled += n
        return filled

    def read(self, limit: int) -> bytes:
        data = bytearray(limit + 1)
        n = self.readinto(memoryview(data))
        if n > limit:
            raise BadRequest(field="body", reason=f"longer than {limit} bytes")
        return bytes(data[:n])

    def _read_some(self, buf: memoryview) -> int:
        if self._chunked:
            if self._chunk_left == 0:
                self._next_chunk()
                if self._done:
                    return 0
            want = min(len(buf), self._chunk_left)
        else:
            want = min(len(buf), self._left)
        try:
            n = self._rfile.readinto(buf[:want])
        except OSError as e:
            raise self._on_error(e) from e
        if not n:
            raise PeerClosed(reason="connection closed inside the request body")
        if self._chunked:
            self._chunk_left -= n
            if self._chunk_left == 0:
                self._expect_crlf()
        else:
            self._left -= n
            self._done = self._left == 0
        return int(n)

    def _line(self) -> bytes:
        try:
            line: bytes = self._rfile.readline(1024)
        except OSError as e:
            raise self._on_error(e) from e
        if not line:
            raise PeerClosed(reason="connection closed inside a chunked body")
        return line

    def _next_chunk(self) -> None:
        m = _CHUNK_SIZE.fullmatch(self._line())
        if m is None:
            raise BadRequest(field="chunked body", reason="malformed chunk size line")
        self._chunk_left = int(m.group(1), 16)
        if self._chunk_left == 0:
            # Trailer fields (section 4.1.2) are read and ignored, bounded.
            for _ in range(64):
                if self._line() in (b"\r\n", b"\n"):
                    self._done = True
                    return
            raise BadRequest(field="chunked body", reason="too many trailer fields")

    def _expect_crlf(self) -> None:
        if self._line() not in (b"\r\n", b"\n"):
            raise BadRequest(field="chunked body", reason="chunk longer than its size")


def read_json(req: Request, body: Body, limit: int) -> dict[str, Any]:
    """A small JSON object body, refused with 413 before reading if too big."""
    # vdsm sends no Content-Type; a client that sends one means JSON.
    ctype = (req.header("Content-Type") or "application/json").split(";")[0]
    if ctype.strip().lower() != "application/json":
        raise UnsupportedMediaType(reason=f"Expected application/json, got {ctype!r}")
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLarge(length=req.content_length, limit=limit)
    try:
        data = body.read(limit)
    except BadRequest:
        raise PayloadTooLarge(length="more than the limit of", limit=limit) from None
    try:
        msg = json.loads(data)
    except ValueError as e:
        raise BadRequest(field="JSON body", reason=str(e)) from None
    if not isinstance(msg, dict):
        raise BadRequest(field="JSON body", reason="expected an object")
    return msg
