"""Chunk-size and trailer lines of the chunked coding (RFC 9112 section 7.1)."""

from __future__ import annotations

import pytest

from vdsm_imageio.errors import BadRequest
from vdsm_imageio.http.chunked import check_trailer_line, parse_size_line, size_line


@pytest.mark.parametrize(
    "line, size",
    [
        (b"0\r\n", 0),
        (b"a\r\n", 10),
        (b"FF\r\n", 255),
        (b"0010\r\n", 16),
        (b"5;name\r\n", 5),
        (b"5;name=value\r\n", 5),
        (b'5;name="quoted; \\"value\\""\r\n', 5),
        (b"5 ; a = b ;c\r\n", 5),
        (b"7fffffffffffffff\r\n", 2**63 - 1),
    ],
)
def test_size_line_is_parsed(line: bytes, size: int) -> None:
    assert parse_size_line(line) == size


@pytest.mark.parametrize(
    "line",
    [
        b"\r\n",
        b"5\n",
        b"5\r",
        b"5",
        b"5\r\r\n",
        b" 5\r\n",
        b"+5\r\n",
        b"-5\r\n",
        b"0x5\r\n",
        b"5 \r\n",
        b"5;\r\n",
        b"5;=v\r\n",
        b"5;a=\r\n",
        b'5;a="unterminated\r\n',
        b"5;a=b c\r\n",
        b"5;a\x00\r\n",
        b"5;a=\xff\r\n",
        b"5\x0b\r\n",
        b"zz\r\n",
        "\u0665\r\n".encode(),  # an Arabic-Indic five
        b"8000000000000000\r\n",
        b"00000000000000005\r\n",
        b"f" * 17 + b"\r\n",
        b"5;a\rb\r\n",
    ],
)
def test_malformed_size_line_is_400(line: bytes) -> None:
    with pytest.raises(BadRequest) as e:
        parse_size_line(line)
    assert e.value.fields["field"] == "chunked body"


@pytest.mark.parametrize("size", [0, 1, 15, 16, 4096, 2**63 - 1])
def test_size_line_round_trips(size: int) -> None:
    assert parse_size_line(size_line(size)) == size


def test_trailer_line_is_a_field_line() -> None:
    check_trailer_line(b"X-Checksum: abc\r\n")


@pytest.mark.parametrize(
    "line", [b"X-A: b\n", b"X-A b\r\n", b" X-A: b\r\n", b"X-A : b\r\n", b"X-A: \x00\r\n"]
)
def test_malformed_trailer_line_is_400(line: bytes) -> None:
    with pytest.raises(BadRequest):
        check_trailer_line(line)
