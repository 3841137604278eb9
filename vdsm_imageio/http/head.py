"""Request heads of HTTP/1.1, parsed strictly: bytes in, a Request or a 400 out.

Pure: reading the bytes off a connection under a byte budget is the job
of ``message.read_head``. Two parsers that disagree on where a field ends
or which Content-Length counts let a client smuggle a second request
through the first, so anything outside the grammar is refused, never
repaired. The rules (RFC 9112 sections 2-6, RFC 9110 section 5):

- Every line ends in CRLF; a bare CR or LF inside a line is refused
  (9112 2.2).
- request-line = method SP request-target SP HTTP-version, single spaces;
  the method is a token, the version HTTP/1.0 or HTTP/1.1 (9112 3).
- The target is origin-form in ASCII: absolute-path ["?" query] made of
  RFC 3986 pchars and well-formed percent-escapes (9112 3.2.1), which
  decode to UTF-8 without control characters.
- field-line = field-name ":" OWS field-value OWS (9112 5): the name is a
  token with no whitespace before the colon (5.1), OWS is SP and HTAB
  only, a line starting with whitespace (obs-fold) is refused (5.2). A
  value is visible ASCII, SP and HTAB: no CTL or NUL, and no obs-text
  either (9110 5.5 tolerates it for old content; no client of this API
  sends it, and bytes such as 0x85 and 0xA0 are exactly where parsers
  disagree on what is whitespace).
- A field we act on appears once (``SINGLETONS``): a second line is
  refused rather than one of them picked (9110 5.3).
- Framing (9112 6): Content-Length is ASCII digits; Transfer-Encoding is
  exactly "chunked", never together with Content-Length and never in
  HTTP/1.0 (6.1).

Field names are case-insensitive; values keep their case. A missing Host
is tolerated (9112 3.2 asks for a 400): this server has one authority and
never reads Host, while a second Host line is refused like any duplicate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from ..errors import BadRequest

# RFC 9110 5.6.2: tchar.
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(TOKEN)
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([^ ]+) HTTP/(1\.[01])")
# RFC 3986 3.3 and 3.4: pchar, and query = *( pchar / "/" / "?" ).
_PCHAR = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_ORIGIN_FORM = re.compile(rb"((?:/" + _PCHAR + rb"*)+)(?:\?((?:" + _PCHAR + rb"|[/?])*))?")
# Field value after OWS is stripped: VCHAR, SP and HTAB (9110 5.5, no obs-text).
_VALUE_RE = re.compile(rb"[\x21-\x7e \t]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]{1,19}")

# Fields whose value this server acts on: exactly one line each.
SINGLETONS = frozenset(
    {
        "host",
        "content-length",
        "content-range",
        "range",
        "content-type",
        "expect",
        "origin",
        "access-control-request-method",
    }
)
# Query parameters are a handful of flags; a flood of them is not a request.
MAX_QUERY_FIELDS = 32
# Largest length a file offset (off_t) can express.
MAX_LENGTH = 2**63 - 1


@dataclass(frozen=True)
class Fields:
    """Header fields in the order received; names compare case-insensitively."""

    lines: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.lines if n.lower() == name]


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: Fields
    path: str
    query: dict[str, str]
    content_length: int | None
    chunked: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def keep_alive(self) -> bool:
        tokens = {
            t.strip().lower() for v in self.headers.get_all("Connection") for t in v.split(",")
        }
        if self.version == "1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def expects_continue(self) -> bool:
        """RFC 9110 section 10.1.1: the client waits for 100 before the body."""
        expect = (self.header("Expect") or "").lower()
        return self.version == "1.1" and expect == "100-continue" and self.has_body

    def to_bytes(self) -> bytes:
        """The head as it would be sent, ending with the empty line."""
        lines = [f"{self.method} {self.target} HTTP/{self.version}"]
        lines += [f"{name}: {value}" for name, value in self.headers.lines]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_head(data: bytes) -> Request:
    """The request in data: a request line, field lines, an empty line."""
    if not data.endswith(b"\r\n\r\n"):
        raise BadRequest(field="request head", reason="does not end with an empty line")
    lines = data[:-4].split(b"\r\n")
    for i, line in enumerate(lines):
        if b"\r" in line or b"\n" in line:
            what = "request line" if i == 0 else f"field line {i}"
            raise BadRequest(field=what, reason="bare CR or LF; lines end with CRLF")
    method, target, version = _request_line(lines[0])
    fields = Fields(tuple(parse_field_line(line) for line in lines[1:]))
    return _request(method, target, version, fields)


def _request_line(line: bytes) -> tuple[str, str, str]:
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise BadRequest(
            field="request line", reason="expected METHOD SP /target SP HTTP/1.1 or HTTP/1.0"
        )
    method, target, version = m.groups()
    if not _ORIGIN_FORM.fullmatch(target):
        # Never echo the target: it holds the ticket id, the secret.
        raise BadRequest(
            field="request target", reason="expected an absolute path of ASCII URL characters"
        )
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def parse_field_line(line: bytes) -> tuple[str, str]:
    """(name, value) of one field line without its CRLF (also trailer lines)."""
    if line[:1] in (b" ", b"\t"):
        # obs-fold, or whitespace between the request line and the first field.
        raise BadRequest(field="field line", reason="starts with whitespace (obs-fold)")
    name, colon, rest = line.partition(b":")
    if not colon:
        raise BadRequest(field="field line", reason="has no colon")
    bare = name.rstrip(b" \t")
    if bare != name and _TOKEN_RE.fullmatch(bare):
        raise BadRequest(field=f"header {_shown(bare)}", reason="whitespace before the colon")
    if not _TOKEN_RE.fullmatch(name):
        raise BadRequest(field="field name", reason="not a token")
    value = rest.strip(b" \t")
    if not _VALUE_RE.fullmatch(value):
        raise BadRequest(
            field=f"header {_shown(name)}", reason="control character or non-ASCII byte in value"
        )
    return name.decode("ascii"), value.decode("ascii")


def _shown(name: bytes) -> str:
    return repr(name.decode("ascii")[:64])


def _request(method: str, target: str, version: str, fields: Fields) -> Request:
    path, query = _origin_form(target)
    for name in SINGLETONS:
        if len(fields.get_all(name)) > 1:
            raise BadRequest(field=_canonical(name), reason="given more than once")
    chunked = _chunked(fields, version)
    length = _content_length(fields)
    if chunked and length is not None:
        # 9112 6.1: the framing is ambiguous; refuse it rather than pick one.
        raise BadRequest(
            field="Content-Length", reason="not allowed with Transfer-Encoding: chunked"
        )
    return Request(
        method=method,
        target=target,
        version=version,
        headers=fields,
        path=path,
        query=query,
        content_length=length,
        chunked=chunked,
    )


def _canonical(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _origin_form(target: str) -> tuple[str, dict[str, str]]:
    # The request line matched _ORIGIN_FORM already: ASCII, one "?" at most
    # before the query (a "?" inside the query is data).
    raw_path, _, raw_query = target.partition("?")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(field="request target", reason="percent-escapes are not UTF-8") from None
    if _CONTROL.search(path):
        raise BadRequest(field="request target", reason="control character in the path")
    return path, _query(raw_query)


def _query(raw: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            raw, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
        )
    except ValueError as e:
        # UnicodeDecodeError is a ValueError too.
        reason = "not UTF-8" if isinstance(e, UnicodeDecodeError) else str(e)
        raise BadRequest(field="query", reason=reason) from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise BadRequest(field=f"query parameter {key[:64]!r}", reason="given twice")
        query[key] = value
    return query


def _content_length(fields: Fields) -> int | None:
    value = fields.get("Content-Length")
    if value is None:
        return None
    # 9110 8.6: 1*DIGIT. str.isdigit() also takes "²" and other non-ASCII digits.
    if not _DIGITS.fullmatch(value) or int(value) > MAX_LENGTH:
        raise BadRequest(
            field="Content-Length", reason=f"expected 1 to 19 ASCII digits, got {value[:32]!r}"
        )
    return int(value)


def _chunked(fields: Fields, version: str) -> bool:
    values = fields.get_all("Transfer-Encoding")
    if not values:
        return False
    if version == "1.0":
        # 9112 6.1: the framing of such a message is faulty.
        raise BadRequest(field="Transfer-Encoding", reason="not allowed in HTTP/1.0")
    codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    if codings != ["chunked"]:
        shown = ", ".join(codings)[:64]
        raise BadRequest(field="Transfer-Encoding", reason=f"unsupported coding {shown!r}")
    return True
