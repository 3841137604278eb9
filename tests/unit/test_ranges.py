from __future__ import annotations

import pytest

from vdsm_imageio.errors import BadRequest, RangeNotSatisfiable
from vdsm_imageio.http.ranges import (
    ByteRange,
    OpenRange,
    check_within,
    parse_content_range,
    parse_range,
)


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-99", 1000, ByteRange(0, 100)),
        ("bytes=10-10", 1000, ByteRange(10, 11)),
        ("bytes=900-", 1000, ByteRange(900, 1000)),
        ("bytes=-100", 1000, ByteRange(900, 1000)),
        ("bytes=-5000", 1000, ByteRange(0, 1000)),
        ("bytes=990-2000", 1000, ByteRange(990, 1000)),
        ("bytes=999-999", 1000, ByteRange(999, 1000)),
    ],
)
def test_range_satisfiable_part(header: str, size: int, expected: ByteRange) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header, size",
    [
        ("bytes=1000-", 1000),
        ("bytes=1000-1001", 1000),
        ("bytes=-0", 1000),
        ("bytes=0-", 0),
        ("bytes=-1", 0),
    ],
)
def test_range_past_end_is_416(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as e:
        parse_range(header, size)
    assert e.value.fields["size"] == size


MALFORMED_RANGES: list[str] = [
    "bytes=",
    "bytes=a-b",
    "bytes=10-5",
    "items=0-1",
    "bytes=0-1,5-6",
    "bytes 0-1",
    "bytes=--1",
    "bytes=-",
    "bytes=1-2-3",
    " bytes=0-1x",
]


@pytest.mark.parametrize("header", MALFORMED_RANGES)
def test_range_malformed_is_400_naming_range(header: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_range(header, 1000)
    assert e.value.fields["field"] == "Range"


def test_content_range_with_complete_length() -> None:
    assert parse_content_range("bytes 0-511/1024") == (ByteRange(0, 512), 1024)


def test_content_range_with_unknown_length() -> None:
    assert parse_content_range("bytes 512-1023/*") == (ByteRange(512, 1024), None)


MALFORMED_CONTENT_RANGES: list[str] = [
    "bytes 5-4/10",
    "bytes */10",
    "bytes 0-10/10",
    "bytes=0-1/2",
    "0-1/2",
    "bytes 0-1",
    "bytes -1-2/3",
]


@pytest.mark.parametrize("header", MALFORMED_CONTENT_RANGES)
def test_content_range_malformed_is_400(header: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_content_range(header)
    assert e.value.fields["field"] == "Content-Range"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 512-*/*", (OpenRange(512), None)),
        ("bytes 0-*/*", (OpenRange(0), None)),
        ("bytes 512-*/1024", (OpenRange(512), 1024)),
        ("BYTES 7-*/*", (OpenRange(7), None)),
    ],
)
def test_content_range_with_open_end_as_ovirt_imageio_takes_it(
    header: str, expected: tuple[OpenRange, int | None]
) -> None:
    # ovirt-imageio's parser takes "first-*": the body goes at first.
    assert parse_content_range(header) == expected


@pytest.mark.parametrize(
    "header",
    ["bytes *-*/*", "bytes -*/*", "bytes 5-*", "bytes 5-**/*", "bytes 1024-*/1024", "bytes 5-* /*"],
)
def test_content_range_with_malformed_open_end_is_400(header: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_content_range(header)
    assert e.value.fields["field"] == "Content-Range"


def test_content_range_header_of_206_reply() -> None:
    assert ByteRange(100, 200).content_range(1000) == "bytes 100-199/1000"


NOT_ASCII_DIGITS_RANGES: list[str] = [
    "bytes=\u0660-\u0663",  # Arabic-Indic digits match \d, not 1*DIGIT
    "bytes=\u00b2-",
    "bytes=0-\uff11",
    "bytes=0-1 ",
    "bytes =0-1",
    "bytes= 0-1",
    "bytes=0 -1",
    "bytes=0-1\t",
]


@pytest.mark.parametrize("header", NOT_ASCII_DIGITS_RANGES)
def test_range_of_non_ascii_digits_or_whitespace_is_400(header: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_range(header, 1000)
    assert e.value.fields["field"] == "Range"


def test_range_unit_is_case_insensitive() -> None:
    assert parse_range("Bytes=0-9", 1000) == ByteRange(0, 10)
    assert parse_content_range("BYTES 0-9/*") == (ByteRange(0, 10), None)


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-" + "9" * 5000, ByteRange(0, 1000)),
        ("bytes=-" + "9" * 5000, ByteRange(0, 1000)),
        ("bytes=" + "0" * 5000 + "5-" + "0" * 5000 + "9", ByteRange(5, 10)),
    ],
)
def test_range_of_huge_numbers_is_parsed_without_converting_them(
    header: str, expected: ByteRange
) -> None:
    assert parse_range(header, 1000) == expected


def test_range_starting_at_a_huge_offset_is_416() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 1000)


@pytest.mark.parametrize(
    "header",
    [
        "bytes " + "9" * 5000 + "-" + "9" * 5000 + "/*",
        f"bytes {2**64}-{2**64}/*",
        f"bytes {2**63}-{2**63}/*",
    ],
)
def test_content_range_at_a_huge_offset_is_past_any_image(header: str) -> None:
    r, _ = parse_content_range(header)
    assert isinstance(r, ByteRange)  # a closed range: it has a length
    with pytest.raises(RangeNotSatisfiable):
        check_within(r.start, r.length, 2**64)


def test_content_range_of_non_ascii_digits_is_400() -> None:
    with pytest.raises(BadRequest):
        parse_content_range("bytes \u0660-\u0663/*")


@pytest.mark.parametrize(
    "start, length, size",
    [(0, 1000, 1000), (999, 1, 1000), (0, 0, 0), (2**63 - 2, 1, 2**63 - 1)],
)
def test_within_the_image(start: int, length: int, size: int) -> None:
    check_within(start, length, size)


@pytest.mark.parametrize(
    "start, length, size",
    [(0, 1001, 1000), (1000, 1, 1000), (2**63 - 1, 1, 2**64), (2**63, 0, 2**64)],
)
def test_past_the_image_or_any_file_is_416(start: int, length: int, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as e:
        check_within(start, length, size)
    assert e.value.fields["size"] == size
