"""Property-based lane over the pure HTTP parsers.

For any input, each parser either returns a value that round-trips
(serialized the way a client would send it, parsed again, the same value)
or raises the domain's 4xx error. Anything else (ValueError, IndexError,
RecursionError, a value that changes on the way round) is a bug that
hypothesis reports with the smallest input it finds.

Inputs are well-formed messages, the same with one byte inserted, replaced
or removed (the bytes that tell two parsers apart are favoured), and raw
noise. Well-formed messages must also parse: a strict parser that refuses
valid requests is no better than a lenient one.
"""

from __future__ import annotations

import io
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vdsm_imageio.errors import BadRequest, PeerClosed, RangeNotSatisfiable
from vdsm_imageio.http.chunked import parse_size_line, size_line
from vdsm_imageio.http.head import parse_head
from vdsm_imageio.http.message import Body, read_head
from vdsm_imageio.http.ranges import ByteRange, OpenRange, parse_content_range, parse_range

# Bounded so that the lane runs in seconds on a loaded machine.
LANE = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
UNRESERVED = "abcXYZ019-._~!$'()*,;:@"
# Where parsers disagree: whitespace they may or may not strip, line ends
# they may or may not honour, bytes some treat as spaces.
TRICKY = b' \t\r\n\x00\x0b\x0c\x7f\x85\xa0\xff:;,="%/?#'


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with one byte inserted, replaced or removed."""
    data = draw(valid)
    at = draw(st.integers(0, len(data)))
    byte = bytes([draw(st.sampled_from(TRICKY) | st.integers(0, 255))])
    how = draw(st.sampled_from(["insert", "replace", "remove"]))
    if how == "insert":
        return data[:at] + byte + data[at:]
    if how == "replace":
        return data[:at] + byte + data[at + 1 :]
    return data[:at] + data[at + 1 :]


# Request heads.

# Any UTF-8 but control characters, which the path refuses even escaped.
PRINTABLE = st.characters(codec="utf-8", exclude_categories=["Cc"])
segments = st.lists(
    st.text(UNRESERVED, max_size=6)
    | st.text(PRINTABLE, max_size=3).map(lambda s: quote(s, safe="")),
    min_size=1,
    max_size=4,
)
queries = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=5),
    st.text(st.characters(codec="utf-8"), max_size=5).map(lambda s: quote(s, safe="")),
    max_size=3,
)


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "PUT", "PATCH", "OPTIONS"]) | st.text(TCHAR, min_size=1))
    target = "/" + "/".join(draw(segments))
    query = draw(queries)
    if query:
        target += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    version = draw(st.sampled_from(["1.1", "1.0"]))
    fields = draw(
        st.lists(
            st.tuples(
                st.text(TCHAR, max_size=10).map(lambda n: "X-" + n),
                st.text(VCHAR, max_size=8),
                st.sampled_from(["", " ", "\t", "  "]),
                st.text(VCHAR + " \t", max_size=8),
                st.sampled_from(["", " ", "\t"]),
            ),
            max_size=5,
        )
    )
    lines = [f"{method} {target} HTTP/{version}"]
    for name, first, ows, rest, tail in fields:
        value = (first + rest).strip(" \t")
        lines.append(f"{name}:{ows}{value}{tail}")
    framing = draw(st.sampled_from(["", "Content-Length: 5", "Transfer-Encoding: chunked"]))
    if framing and not (version == "1.0" and framing.startswith("Transfer")):
        lines.append(framing)
    for name, value in draw(
        st.lists(
            st.sampled_from(
                [("Host", "localhost"), ("Range", "bytes=0-9"), ("Content-Range", "bytes 0-4/*")]
            ),
            unique=True,
            max_size=3,
        )
    ):
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def round_trips_or_400(data: bytes) -> None:
    try:
        req = parse_head(data)
    except BadRequest:
        return
    again = parse_head(req.to_bytes())
    assert again == req
    # What we act on is what the client sent, once.
    lengths = again.headers.get_all("Content-Length")
    if lengths:
        assert len(lengths) == 1
        assert int(lengths[0]) == again.content_length
    else:
        assert again.content_length is None


@LANE
@given(valid_heads())
def test_valid_request_head_parses_and_round_trips(data: bytes) -> None:
    req = parse_head(data)
    assert parse_head(req.to_bytes()) == req


@LANE
@given(mutated(valid_heads()))
def test_damaged_request_head_round_trips_or_is_400(data: bytes) -> None:
    round_trips_or_400(data)


@LANE
@given(st.binary(max_size=200))
def test_any_bytes_as_a_head_round_trip_or_are_400(data: bytes) -> None:
    round_trips_or_400(data + b"\r\n\r\n")


@LANE
@given(valid_heads() | mutated(valid_heads()))
def test_head_read_from_a_stream_agrees_with_the_pure_parser(data: bytes) -> None:
    try:
        req = read_head(io.BufferedReader(io.BytesIO(data)), 4096)
    except (BadRequest, PeerClosed):
        return
    assert req is not None
    assert parse_head(req.to_bytes()) == req


# Range and Content-Range.

positions = st.integers(0, 3000) | st.integers(0, 2**80)
sizes = st.integers(0, 2000) | st.just(2**63 - 1)


@st.composite
def valid_ranges(draw: st.DrawFn) -> bytes:
    unit = draw(st.sampled_from(["bytes", "Bytes", "BYTES"]))
    first, last = sorted([draw(positions), draw(positions)])
    spec = draw(st.sampled_from([f"{first}-{last}", f"{first}-", f"-{last}"]))
    return f"{unit}={spec}".encode()


def range_round_trips_or_4xx(value: str, size: int) -> None:
    try:
        r = parse_range(value, size)
    except (BadRequest, RangeNotSatisfiable):
        return
    assert 0 <= r.start < r.end <= size
    assert parse_range(f"bytes={r.start}-{r.end - 1}", size) == r


@LANE
@given(valid_ranges(), sizes)
def test_valid_range_is_satisfied_or_416(value: bytes, size: int) -> None:
    try:
        r = parse_range(value.decode(), size)
    except RangeNotSatisfiable:
        return
    assert parse_range(f"bytes={r.start}-{r.end - 1}", size) == r


@LANE
@given(mutated(valid_ranges()) | st.binary(max_size=30), sizes)
def test_any_range_round_trips_or_is_4xx(value: bytes, size: int) -> None:
    range_round_trips_or_4xx(value.decode("latin-1"), size)


@LANE
@given(st.text(max_size=30), sizes)
def test_any_text_as_a_range_round_trips_or_is_4xx(value: str, size: int) -> None:
    range_round_trips_or_4xx(value, size)


@st.composite
def valid_content_ranges(draw: st.DrawFn) -> bytes:
    first, last = sorted([draw(positions), draw(positions)])
    total = draw(st.just("*") | st.integers(last + 1, last + 2**64).map(str))
    # ovirt-imageio's open end ("first-*") now and then.
    end = draw(st.sampled_from([str(last), str(last), str(last), "*"]))
    return f"bytes {first}-{end}/{total}".encode()


def content_range(r: ByteRange | OpenRange, total: int | None) -> str:
    last = "*" if isinstance(r, OpenRange) else r.end - 1
    return f"bytes {r.start}-{last}/{'*' if total is None else total}"


def content_range_round_trips_or_400(value: str) -> None:
    try:
        r, total = parse_content_range(value)
    except BadRequest:
        return
    if isinstance(r, OpenRange):
        assert 0 <= r.start and (total is None or r.start < total)
    else:
        assert 0 <= r.start < r.end
        assert total is None or r.end <= total
    assert parse_content_range(content_range(r, total)) == (r, total)


@LANE
@given(valid_content_ranges())
def test_valid_content_range_parses_and_round_trips(value: bytes) -> None:
    r, total = parse_content_range(value.decode())
    assert parse_content_range(content_range(r, total)) == (r, total)


@LANE
@given(mutated(valid_content_ranges()) | st.binary(max_size=30))
def test_any_content_range_round_trips_or_is_400(value: bytes) -> None:
    content_range_round_trips_or_400(value.decode("latin-1"))


# Chunked framing.

extensions = st.sampled_from([b"", b";x", b";a=b", b' ; name = "q\\"; x"', b";a;b=c"])


@st.composite
def valid_size_lines(draw: st.DrawFn) -> bytes:
    digits = b"%x" % draw(st.integers(0, 2**63 - 1))
    if draw(st.booleans()):
        digits = digits.upper()
    return digits + draw(extensions) + b"\r\n"


@LANE
@given(valid_size_lines())
def test_valid_chunk_size_line_parses_and_round_trips(line: bytes) -> None:
    size = parse_size_line(line)
    assert parse_size_line(size_line(size)) == size


@LANE
@given(mutated(valid_size_lines()) | st.binary(max_size=40))
def test_any_chunk_size_line_round_trips_or_is_400(line: bytes) -> None:
    try:
        size = parse_size_line(line)
    except BadRequest:
        return
    assert parse_size_line(size_line(size)) == size


CHUNKED_HEAD = b"PUT /images/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"


def decode(stream: bytes) -> tuple[bytes, bytes]:
    """The payload of a chunked body and what follows it on the stream."""
    rfile = io.BufferedReader(io.BytesIO(CHUNKED_HEAD + stream))
    req = read_head(rfile, 4096)
    assert req is not None and req.chunked
    body = Body(rfile, req, lambda e: PeerClosed(reason=str(e)))
    buf = memoryview(bytearray(len(stream) + 1))
    n = body.readinto(buf)
    assert body.done
    return bytes(buf[:n]), rfile.read()


def encode(chunks: list[bytes], extension: bytes = b"", trailer: bytes = b"") -> bytes:
    out = b"".join(size_line(len(c))[:-2] + extension + b"\r\n" + c + b"\r\n" for c in chunks if c)
    return out + b"0\r\n" + trailer + b"\r\n"


chunk_lists = st.lists(st.binary(min_size=1, max_size=40), max_size=6)
trailers = st.sampled_from([b"", b"X-Sum: 1\r\n", b"A: 1\r\nB:\r\n"])


@LANE
@given(chunk_lists, extensions, trailers)
def test_chunked_body_round_trips(chunks: list[bytes], extension: bytes, trailer: bytes) -> None:
    payload, rest = decode(encode(chunks, extension, trailer) + b"NEXT")
    assert payload == b"".join(chunks)
    assert rest == b"NEXT"
    assert decode(encode([payload]))[0] == payload


@st.composite
def chunked_streams(draw: st.DrawFn) -> bytes:
    return encode(draw(chunk_lists), draw(extensions), draw(trailers))


@LANE
@given(mutated(chunked_streams()))
def test_damaged_chunked_body_is_400_or_decodes_consistently(stream: bytes) -> None:
    try:
        payload, _ = decode(stream)
    except (BadRequest, PeerClosed):
        return
    assert decode(encode([payload]))[0] == payload
