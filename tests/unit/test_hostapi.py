"""Reading a host daemon's replies (vdsm_imageio.backends.hostapi), without sockets."""

from __future__ import annotations

import json

import pytest

from vdsm_imageio.backends import DirtyExtent, ZeroExtent
from vdsm_imageio.backends import hostapi as api
from vdsm_imageio.errors import HostError, HostForbidden, HostRefused, UnsupportedContext
from vdsm_imageio.http.errors import reply_for

HOST = "10.0.0.2:54322"


def options(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_options_of_our_daemon() -> None:
    body = options(
        unix_socket="\0/org/ovirt/imageio",
        features=["checksum", "extents", "zero", "flush"],
        max_readers=8,
        max_writers=1,
        size=1 << 30,
        ops=["read", "write"],
    )
    got = api.parse_options(HOST, 200, body)
    assert got.features == {"checksum", "extents", "zero", "flush"}
    assert (got.max_readers, got.max_writers, got.size) == (8, 1, 1 << 30)
    assert got.unix_socket == "\0/org/ovirt/imageio"


def test_options_without_limits_or_size_assume_one_connection() -> None:
    # ovirt-imageio 2.5.1 advertises no size; older daemons no limits.
    got = api.parse_options(HOST, 200, options(features=["extents"]))
    assert (got.max_readers, got.max_writers, got.size, got.unix_socket) == (1, 1, None, None)


@pytest.mark.parametrize("status", [204, 405])
def test_daemons_older_than_options_offer_nothing(status: int) -> None:
    assert api.parse_options(HOST, status, b"") == api.NO_OPTIONS


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        options(features="zero"),
        options(features=[1]),
        options(max_readers=True),
        options(max_writers=-1),
        options(size="1"),
        options(unix_socket=3),
    ],
)
def test_malformed_options_are_the_hosts_failure(body: bytes) -> None:
    with pytest.raises(HostError) as e:
        api.parse_options(HOST, 200, body)
    assert type(e.value) is HostError
    assert "bad OPTIONS reply" in str(e.value)


def test_refused_options_keep_the_hosts_status() -> None:
    with pytest.raises(HostForbidden) as e:
        api.parse_options(HOST, 403, b"Transfer t-1 has expired\n")
    assert str(e.value) == f"Host daemon at {HOST}: Transfer t-1 has expired"


def test_range_header_names_inclusive_bytes() -> None:
    assert api.range_header(0, 1) == "bytes=0-0"
    assert api.range_header(4096, 8192) == "bytes=4096-12287"


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes 0-0/10", (0, 1, 10)),
        ("bytes 4096-12287/*", (4096, 12288, None)),
    ],
)
def test_content_range_of_a_partial_reply(
    header: str, expected: tuple[int, int, int | None]
) -> None:
    assert api.content_range(HOST, header) == expected


@pytest.mark.parametrize(
    "header", [None, "", "bytes 5-4/10", "bytes */10", "items 0-1/2", "bytes 0-1/x"]
)
def test_malformed_content_range_is_the_hosts_failure(header: str | None) -> None:
    with pytest.raises(HostError, match="bad GET reply"):
        api.content_range(HOST, header)


def test_extents_of_both_contexts() -> None:
    zero = b'[{"start": 0, "length": 5, "zero": false, "hole": false}]'
    dirty = b'[{"start": 0, "length": 5, "dirty": true, "zero": false}]'
    assert api.parse_extents(HOST, "zero", zero) == [ZeroExtent(0, 5, zero=False, hole=False)]
    assert api.parse_extents(HOST, "dirty", dirty) == [DirtyExtent(0, 5, dirty=True, zero=False)]


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[1]",
        b'[{"start": 0, "length": 5, "zero": false}]',
        b'[{"start": -1, "length": 5, "zero": false, "hole": false}]',
        b'[{"start": 0, "length": 5, "zero": 0, "hole": false}]',
        b'[{"start": true, "length": 5, "zero": false, "hole": false}]',
    ],
)
def test_malformed_extents_are_the_hosts_failure(body: bytes) -> None:
    with pytest.raises(HostError, match="bad EXTENTS reply"):
        api.parse_extents(HOST, "zero", body)


def test_extents_are_clipped_to_what_was_asked() -> None:
    # ovirt-imageio answers for the whole image, whatever start and length.
    whole = [ZeroExtent(0, 100, False, False), ZeroExtent(100, 900, True, True)]
    assert list(api.clip(whole, 50, 150)) == [
        ZeroExtent(50, 50, False, False),
        ZeroExtent(100, 50, True, True),
    ]
    assert list(api.clip(whole, 1000, 1100)) == []


def test_pages_meet_in_one_extent() -> None:
    pages = [
        ZeroExtent(0, 10, True, True),
        ZeroExtent(10, 5, True, True),
        ZeroExtent(15, 5, False, False),
    ]
    assert api.merge(pages) == [ZeroExtent(0, 15, True, True), ZeroExtent(15, 5, False, False)]
    dirty = [
        DirtyExtent(0, 1, True, False),
        DirtyExtent(1, 1, True, False),
        DirtyExtent(2, 1, False, False),
    ]
    assert api.merge(dirty) == [DirtyExtent(0, 2, True, False), DirtyExtent(2, 1, False, False)]


def test_extents_the_host_does_not_have_are_404() -> None:
    error = api.extents_error(HOST, "dirty", 404, b"The ticket does not support dirty extents\n")
    assert isinstance(error, UnsupportedContext)
    reply = reply_for(error)
    assert reply is not None and reply.status == 404


@pytest.mark.parametrize(
    "status, cls, client_status, closes",
    [
        (400, HostRefused, 400, False),
        (403, HostForbidden, 403, True),
        (404, HostRefused, 404, False),
        (413, HostRefused, 413, True),
        (503, HostRefused, 503, False),
        (507, HostRefused, 507, True),
        (500, HostError, 502, False),
        (502, HostError, 502, False),
    ],
)
def test_host_statuses_reach_the_client(
    status: int, cls: type[HostError], client_status: int, closes: bool
) -> None:
    error = api.error_for(HOST, status, b"what the host said\nmore\n")
    assert type(error) is cls
    reply = reply_for(error)
    assert reply is not None
    assert (reply.status, reply.close) == (client_status, closes)
    assert "what the host said" in reply.message
    assert "more" not in reply.message


def test_host_416_tells_the_size() -> None:
    reply = reply_for(api.error_for(HOST, 416, b"Requested range is outside\n", size=4096))
    assert reply is not None
    assert reply.status == 416
    assert reply.headers == {"Content-Range": "bytes */4096"}


def test_host_503_asks_to_retry() -> None:
    reply = reply_for(api.error_for(HOST, 503, b"Too many writer connections\n"))
    assert reply is not None and reply.headers == {"Retry-After": "1"}


def test_host_message_is_one_short_clean_line() -> None:
    assert api.message_of(b"a\x1b[31mb\tc\r\nsecond") == "a [31mb c"
    long = api.message_of(b"x" * 5000)
    assert len(long) == api.MAX_MESSAGE + 3 and long.endswith("...")
    assert api.message_of(b"\xff\xfe bad utf-8") == "\ufffd\ufffd bad utf-8"
    assert api.error_for(HOST, 409, b"").message == f"Host daemon at {HOST}: status 409"


def test_checksum_reply() -> None:
    body = b'{"algorithm": "blake2b", "block_size": 4194304, "checksum": "ab"}'
    assert api.parse_checksum(HOST, body, algorithm="blake2b", block_size=4194304) == "ab"
    with pytest.raises(HostError, match="bad CHECKSUM reply"):
        api.parse_checksum(
            HOST,
            b'{"algorithm": "blake2b", "block_size": "4", "checksum": "ab"}',
            algorithm="blake2b",
            block_size=4,
        )


@pytest.mark.parametrize("algorithm, block_size", [("sha256", 4194304), ("blake2b", 1048576)])
def test_a_checksum_of_other_blocks_or_algorithm_is_the_hosts_failure(
    algorithm: str, block_size: int
) -> None:
    body = b'{"algorithm": "blake2b", "block_size": 4194304, "checksum": "ab"}'
    with pytest.raises(HostError, match="bad CHECKSUM reply: asked for"):
        api.parse_checksum(HOST, body, algorithm=algorithm, block_size=block_size)


def test_pages_of_a_host_that_answers_less_than_asked_are_joined() -> None:
    data = [ZeroExtent(0, 300, False, False), ZeroExtent(300, 700, True, True)]
    asked: list[tuple[int, int]] = []

    def page(start: int, end: int) -> list[ZeroExtent]:
        # At most 250 bytes an answer, as a host that pages would.
        asked.append((start, end))
        return list(api.clip(data, start, min(end, start + 250)))  # type: ignore[arg-type]

    assert api.paged(HOST, page, 100, 900) == [
        ZeroExtent(100, 200, False, False),
        ZeroExtent(300, 600, True, True),
    ]
    assert asked == [(100, 900), (350, 900), (600, 900), (850, 900)]


def test_a_host_that_answers_for_the_whole_image_is_clipped() -> None:
    whole = [ZeroExtent(0, 1000, True, True)]
    assert api.paged(HOST, lambda a, b: whole, 10, 20) == [ZeroExtent(10, 10, True, True)]


@pytest.mark.parametrize(
    "answer, reason",
    [
        ([], "none from offset 10"),
        ([ZeroExtent(11, 5, True, True)], "a gap or an overlap at offset 10"),
        ([ZeroExtent(0, 15, True, True), ZeroExtent(12, 8, True, True)], "a gap or an overlap"),
    ],
)
def test_pages_that_do_not_go_on_are_the_hosts_failure(
    answer: list[ZeroExtent], reason: str
) -> None:
    with pytest.raises(HostError, match=f"bad EXTENTS reply: {reason}"):
        api.paged(HOST, lambda a, b: answer, 10, 20)
