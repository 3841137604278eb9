"""The chunked transfer coding's framing lines (RFC 9112 section 7.1), strict.

Pure: ``message.Body`` reads the lines and the chunk data; these functions
judge the lines. A chunk-size line that one parser reads as 0x10 and
another as 0 is how a body smuggles a request, so the grammar is taken
as written:

    chunk-size [ chunk-ext ] CRLF
    chunk-ext  = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
    ext-val    = token / quoted-string

with BWS = SP / HTAB, hex digits only (no sign, no "0x", no spaces before
the size), and a size that fits a file offset. Extensions are checked and
ignored. Trailer lines are field lines (section 7.1.2), checked by the
head's parser and then ignored: nothing in them changes how we act.
"""

from __future__ import annotations

import re

from ..errors import BadRequest
from .head import TOKEN, parse_field_line

# RFC 9110 5.6.4: quoted-string, without obs-text (see head).
_QUOTED = rb'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_EXT = rb"[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|" + _QUOTED + rb"))?"
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:" + _EXT + rb")*)\r\n")
# A larger chunk could not be written anywhere anyway (off_t).
MAX_CHUNK = 2**63 - 1
# Size lines carry at most a few extensions; a longer one is not a chunk.
MAX_LINE = 1024


def parse_size_line(line: bytes) -> int:
    """The size of the chunk that this line (with its CRLF) announces."""
    m = _SIZE_LINE.fullmatch(line)
    if m is None:
        raise BadRequest(field="chunked body", reason="malformed chunk size line")
    size = int(m.group(1), 16)
    if size > MAX_CHUNK:
        raise BadRequest(field="chunked body", reason="chunk size too large")
    return size


def size_line(size: int) -> bytes:
    return b"%x\r\n" % size


def check_trailer_line(line: bytes) -> None:
    """A trailer field line with its CRLF; refused unless well-formed."""
    if not line.endswith(b"\r\n"):
        raise BadRequest(field="chunked body", reason="trailer line does not end with CRLF")
    body = line[:-2]
    if b"\r" in body or b"\n" in body:
        raise BadRequest(field="chunked body", reason="bare CR or LF in a trailer line")
    parse_field_line(body)
