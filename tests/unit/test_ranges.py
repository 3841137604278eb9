import pytest

from vdsm_imageio.errors import BadRequest, RangeNotSatisfiable
from vdsm_imageio.http.ranges import ByteRange, parse_content_range, parse_range


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
def test_range_satisfiable_part(header, size, expected):
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
def test_range_past_end_is_416(header, size):
    with pytest.raises(RangeNotSatisfiable) as e:
        parse_range(header, size)
    assert e.value.fields["size"] == size


@pytest.mark.parametrize(
    "header",
    [
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
    ],
)
def test_range_malformed_is_400_naming_range(header):
    with pytest.raises(BadRequest) as e:
        parse_range(header, 1000)
    assert e.value.fields["field"] == "Range"


def test_content_range_with_complete_length():
    assert parse_content_range("bytes 0-511/1024") == (ByteRange(0, 512), 1024)


def test_content_range_with_unknown_length():
    assert parse_content_range("bytes 512-1023/*") == (ByteRange(512, 1024), None)


@pytest.mark.parametrize(
    "header",
    [
        "bytes 5-4/10",
        "bytes */10",
        "bytes 0-10/10",
        "bytes=0-1/2",
        "0-1/2",
        "bytes 0-1",
        "bytes -1-2/3",
    ],
)
def test_content_range_malformed_is_400(header):
    with pytest.raises(BadRequest) as e:
        parse_content_range(header)
    assert e.value.fields["field"] == "Content-Range"


def test_content_range_header_of_206_reply():
    assert ByteRange(100, 200).content_range(1000) == "bytes 100-199/1000"
