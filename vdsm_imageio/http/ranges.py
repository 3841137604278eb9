"""Range and Content-Range parsing (RFC 9110 section 14), strict.

A lenient parser writes data to the wrong offset, so anything that is not
exactly one well-formed byte range is rejected with the header named. Only
single ranges are served: a multipart/byteranges reply would not help any
client of this service. One form outside the RFC is taken, because
ovirt-imageio takes it: a PUT's ``bytes N-*/*`` (or ``N-*/SIZE``) puts the
body, whatever its length, at N.

Positions are ASCII digits of any length (section 14.1.1 sets no bound).
No file offset reaches 2**63 (off_t), so every larger position means the
same: past the end of any image. Parsing compares the digits exactly and
then caps positions at ``BEYOND`` instead of converting thousands of digits
(which Python refuses past 4300).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadRequest, RangeNotSatisfiable

# Section 14.1.2: byte-range-spec / suffix-range; units compare case-insensitively.
_RANGE_RE = re.compile(r"bytes=(?:([0-9]+)-([0-9]*)|-([0-9]+))", re.ASCII | re.IGNORECASE)
# Section 14.4: range-unit SP (incl-range "/" (complete-length / "*")), and
# ovirt-imageio's open end "first-*": from first to the end of the body.
_CONTENT_RANGE_RE = re.compile(r"bytes ([0-9]+)-([0-9]+|\*)/([0-9]+|\*)", re.ASCII | re.IGNORECASE)
# Largest size a file can have; one more is past every image.
MAX_SIZE = 2**63 - 1
BEYOND = MAX_SIZE + 1


@dataclass(frozen=True)
class OpenRange:
    """From start to wherever the body ends (``bytes N-*/...``)."""

    start: int


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
    if "," in value:
        raise BadRequest(field="Range", reason="multiple ranges are not supported")
    m = _RANGE_RE.fullmatch(value)
    if m is None:
        raise BadRequest(field="Range", reason=f"malformed value {_shown(value)}")
    first, last, suffix = m.groups()
    if suffix is not None:
        n = _position(suffix)
        # A zero-length suffix can never be satisfied (section 14.1.3).
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(size=size)
        return ByteRange(max(0, size - n), size)
    if last and _exact(last) < _exact(first):
        raise BadRequest(field="Range", reason="last byte is before first byte")
    start = _position(first)
    if start >= size:
        raise RangeNotSatisfiable(size=size)
    # A last byte past the end means "to the end" (section 14.1.2).
    end = size if not last else min(_position(last) + 1, size)
    return ByteRange(start, end)


def parse_content_range(value: str) -> tuple[ByteRange | OpenRange, int | None]:
    """Content-Range of a PUT: the range and the complete length if given."""
    m = _CONTENT_RANGE_RE.fullmatch(value)
    if m is None:
        raise BadRequest(field="Content-Range", reason=f"malformed value {_shown(value)}")
    first, last, complete = m.groups()
    if last == "*":
        if complete != "*" and _exact(first) >= _exact(complete):
            raise BadRequest(field="Content-Range", reason="range starts past the complete length")
        total = None if complete == "*" else _position(complete, cap=BEYOND + 1)
        return OpenRange(_position(first)), total
    if _exact(last) < _exact(first):
        raise BadRequest(field="Content-Range", reason="last byte is before first byte")
    if complete != "*" and _exact(last) >= _exact(complete):
        raise BadRequest(field="Content-Range", reason="range ends past the complete length")
    # A complete length past any file is one more than any capped position,
    # so that the range still ends inside it.
    total = None if complete == "*" else _position(complete, cap=BEYOND + 1)
    return ByteRange(_position(first), _position(last) + 1), total


def check_within(start: int, length: int, size: int) -> None:
    """Refuse with 416 a write or query that does not fit the image.

    The size is a ticket's; one too large for a file is never a licence to
    go past what a file offset can express.
    """
    if start + length > min(size, MAX_SIZE):
        raise RangeNotSatisfiable(size=size)


def _position(digits: str, cap: int = BEYOND) -> int:
    significant = digits.lstrip("0")
    if len(significant) > len(str(cap)):
        return cap
    # int() of the digits themselves would count the leading zeros too.
    return min(int(significant or "0"), cap)


def _exact(digits: str) -> tuple[int, str]:
    """Orders digit strings as the numbers they spell, however long."""
    significant = digits.lstrip("0")
    return len(significant), significant


def _shown(value: str) -> str:
    # Enough to recognize the value in a reply or a log, never a flood.
    return repr(value if len(value) <= 40 else value[:40] + "...")
