"""The bytes the HTTP corpus sends, and the record of what each case expects.

A case is a raw request (``{rw}`` and ``{ro}`` stand for the writable and
the read-only ticket's ids), the status it must get, and whether the
connection stays usable after the reply. The builders write the framing
once so a table row says only what is hostile about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.integration.hostile.corpus import (
    IMAGE_SIZE,
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
