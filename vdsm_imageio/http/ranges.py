"""Range and Content-Range parsing (RFC 7233), strict.

A lenient parser writes data to the wrong offset, so anything that is not
exactly one well-formed byte range is rejected with the header named. Only
single ranges are served: a multipart/byteranges reply would not help any
client of this service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest, RangeNotSatisfiable

# RFC 7233 section 2.1: byte-range-spec / suffix-byte-range-spec.
_RANGE_RE = re.compile(r"bytes=(?:(\d+)-(\d*)|-(\d+))")
# Section 4.2: byte-content-range = bytes-unit SP (byte-range "/" (length / "*")).
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class ByteRange:
    """Half-open range [start, end)."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(value: str, size: int) -> ByteRange:
    """The satisfiable part of a Range header against an image of size bytes."""
    value = value.strip()
    if "," in value:
        raise BadRequest(field="Range", reason="multiple ranges are not supported")
    m = _RANGE_RE.fullmatch(value)
    if m is None:
        raise BadRequest(field="Range", reason=f"malformed value {value!r}")
    first, last, suffix = m.groups()
    if suffix is not None:
        n = int(suffix)
        # A zero-length suffix can never be satisfied (section 2.1).
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(size=size)
        return ByteRange(max(0, size - n), size)
    start = int(first)
    if last and int(last) < start:
        raise BadRequest(field="Range", reason="last byte is before first byte")
    if start >= size:
        raise RangeNotSatisfiable(size=size)
    # A last byte past the end means "to the end" (section 2.1).
    end = size if not last else min(int(last) + 1, size)
    return ByteRange(start, end)


def parse_content_range(value: str) -> tuple[ByteRange, int | None]:
    """Content-Range of a PUT: the range and the complete length if given."""
    m = _CONTENT_RANGE_RE.fullmatch(value.strip())
    if m is None:
        raise BadRequest(field="Content-Range", reason=f"malformed value {value!r}")
    first, last, complete = int(m.group(1)), int(m.group(2)), m.group(3)
    if last < first:
        raise BadRequest(field="Content-Range", reason="last byte is before first byte")
    total = None if complete == "*" else int(complete)
    if total is not None and last >= total:
        raise BadRequest(field="Content-Range", reason="range ends past the complete length")
    return ByteRange(first, last + 1), total
