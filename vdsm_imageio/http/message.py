"""Reading requests off a connection: the head under a byte budget, then the body.

The head is read line by line against a byte budget, so a header flood
costs at most ``max_header_bytes`` before it is refused with 431; its
grammar is judged by the pure parser in ``head``. Bodies are either
``Content-Length`` or ``chunked`` (framing lines judged by ``chunked``);
reads never cross into the next request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ..errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    PeerClosed,
    UnsupportedMediaType,
)
from . import chunked
from .head import Request as Request
from .head import parse_head

# RFC 9112 section 2.2: empty lines before a request line may be ignored.
_MAX_EMPTY_LINES = 4
# Trailer fields are read and ignored, but not without end.
_MAX_TRAILER_LINES = 64
# Our JSON bodies are flat objects. Python's parser recurses once per level
# and fails with RecursionError a thousand levels down; refuse long before.
MAX_JSON_DEPTH = 32
_JSON_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


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
        if line != b"\r\n":
            break
    lines = [line]
    # A bare LF ends the head here too, so that a malformed head is refused
    # at once rather than waited on; the parser refuses the bare LF.
    while line not in (b"\r\n", b"\n"):
        got = _readline(rfile, budget)
        if got is None:
            raise PeerClosed(reason="connection closed inside the request head")
        line = got
        budget -= len(line)
        lines.append(line)
    return parse_head(b"".join(lines))


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


class _TooLong(BadRequest):
    """A body longer than the caller's limit (a malformed one is BadRequest)."""


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
            raise _TooLong(field="body", reason=f"longer than {limit} bytes")
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
            line: bytes = self._rfile.readline(chunked.MAX_LINE)
        except OSError as e:
            raise self._on_error(e) from e
        if not line:
            raise PeerClosed(reason="connection closed inside a chunked body")
        return line

    def _next_chunk(self) -> None:
        self._chunk_left = chunked.parse_size_line(self._line())
        if self._chunk_left == 0:
            for _ in range(_MAX_TRAILER_LINES):
                line = self._line()
                if line == b"\r\n":
                    self._done = True
                    return
                chunked.check_trailer_line(line)
            raise BadRequest(field="chunked body", reason="too many trailer fields")

    def _expect_crlf(self) -> None:
        if self._line() != b"\r\n":
            raise BadRequest(field="chunked body", reason="chunk data does not end with CRLF")


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
    except _TooLong:
        raise PayloadTooLarge(length=None, limit=limit) from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise BadRequest(field="JSON body", reason=f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        msg = json.loads(data)
    except ValueError as e:
        raise BadRequest(field="JSON body", reason=str(e)) from None
    if not isinstance(msg, dict):
        raise BadRequest(field="JSON body", reason="expected an object")
    return msg


def _depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects, strings skipped."""
    depth = deepest = 0
    for m in _JSON_NESTING.finditer(data):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest
