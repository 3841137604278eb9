"""PATCH zero and flush, extents, OPTIONS and /info/ through a real daemon."""

from __future__ import annotations

import errno
import http.client
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.daemon import UnixHTTPConnection

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2


def request(
    conn: http.client.HTTPConnection,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, url, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def patch(
    conn: http.client.HTTPConnection, ticket_id: str, msg: dict[str, Any]
) -> tuple[int, bytes]:
    status, _, body = request(
        conn,
        "PATCH",
        f"/images/{ticket_id}",
        json.dumps(msg).encode(),
        {"Content-Type": "application/json"},
    )
    return status, body


def allocated_ranges(path: Path) -> list[tuple[int, int]]:
    """Data runs of a file according to SEEK_DATA/SEEK_HOLE."""
    out = []
    with open(path, "rb") as f:
        fd, end, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                assert e.errno == errno.ENXIO
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, hole))
            pos = hole
    return out


# PATCH zero and flush.


@pytest.mark.parametrize("sparse", [True, False])
def test_zeroed_range_reads_back_as_zeros(daemon: Daemon, sparse: bool) -> None:
    size = 4 * MiB
    ticket_id, _ = daemon.add_ticket(size=size, data=b"\xff" * size, sparse=sparse)
    conn = daemon.https()
    status, body = patch(
        conn, ticket_id, {"op": "zero", "offset": MiB + 100, "size": MiB, "flush": True}
    )
    assert status == 200, body
    status, _, got = request(conn, "GET", f"/images/{ticket_id}")
    conn.close()
    assert status == 200
    assert got == b"\xff" * (MiB + 100) + b"\0" * MiB + b"\xff" * (2 * MiB - 100)


def test_zero_punches_hole_on_sparse_ticket(daemon: Daemon) -> None:
    size = 4 * MiB
    ticket_id, path = daemon.add_ticket(size=size, data=b"\xff" * size, sparse=True)
    assert allocated_ranges(path) == [(0, size)]
    blocks = path.stat().st_blocks
    conn = daemon.unix()
    status, body = patch(conn, ticket_id, {"op": "zero", "offset": MiB, "size": 2 * MiB})
    conn.close()
    assert status == 200, body
    assert allocated_ranges(path) == [(0, MiB), (3 * MiB, size)]
    assert path.stat().st_blocks == blocks - 2 * MiB // 512


def test_zero_keeps_allocation_on_non_sparse_ticket(daemon: Daemon) -> None:
    size = 4 * MiB
    ticket_id, path = daemon.add_ticket(size=size, data=b"\xff" * size, sparse=False)
    blocks = path.stat().st_blocks
    conn = daemon.unix()
    status, body = patch(conn, ticket_id, {"op": "zero", "offset": MiB, "size": 2 * MiB})
    conn.close()
    assert status == 200, body
    # ZERO_RANGE keeps the blocks (as unwritten extents, which SEEK_HOLE on
    # ext4 may report as a hole, so count blocks instead).
    assert path.stat().st_blocks == blocks
    with open(path, "rb") as f:
        f.seek(MiB)
        assert f.read(2 * MiB) == b"\0" * (2 * MiB)


def test_zero_past_ticket_size_is_416(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    status, _ = patch(conn, ticket_id, {"op": "zero", "offset": MiB - 1, "size": 2})
    conn.close()
    assert status == 416


def test_patch_flush_succeeds(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    status, _, _ = request(
        conn, "PUT", f"/images/{ticket_id}?flush=n", b"abc", {"Content-Range": "bytes 0-2/*"}
    )
    assert status == 200
    status, body = patch(conn, ticket_id, {"op": "flush"})
    conn.close()
    assert status == 200, body
    with open(path, "rb") as f:
        assert f.read(3) == b"abc"


@pytest.mark.parametrize(
    "body,content_type,status,names",
    [
        (b'{"op": "trim"}', "application/json", 400, b"op"),
        (b"not json", "application/json", 400, b"JSON"),
        (b'["zero"]', "application/json", 400, b"object"),
        (b'{"op": "zero", "offset": 0}', "application/json", 400, b"size"),
        (b'{"op": "zero", "size": -1}', "application/json", 400, b"size"),
        (b'{"op": "zero", "size": 1, "flush": "yes"}', "application/json", 400, b"flush"),
        (b'{"op": "flush"}', "text/plain", 415, b"application/json"),
    ],
)
def test_bad_patch_is_rejected_naming_the_problem(
    daemon: Daemon, body: bytes, content_type: str, status: int, names: bytes
) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    got, headers, text = request(
        conn, "PATCH", f"/images/{ticket_id}", body, {"Content-Type": content_type}
    )
    assert got == status
    assert headers["Content-Type"].startswith("text/plain")
    assert names in text
    # A 4xx for a malformed body keeps the connection usable.
    got, _, _ = request(conn, "OPTIONS", f"/images/{ticket_id}")
    conn.close()
    assert got == 200


# Extents.


@pytest.fixture(scope="module")
def holey(daemon: Daemon) -> tuple[str, int]:
    """An 8 MiB image: data at [1, 2) MiB and [5, 6) MiB, holes elsewhere."""
    size = 8 * MiB
    ticket_id, path = daemon.add_ticket(size=size, ops=("read",))
    with open(path, "r+b") as f:
        for start in (1, 5):
            f.seek(start * MiB)
            f.write(b"\x01" * MiB)
    return ticket_id, size


def extents(daemon: Daemon, ticket_id: str, query: str) -> tuple[int, Any]:
    conn = daemon.https()
    status, _, body = request(conn, "GET", f"/images/{ticket_id}/extents{query}")
    conn.close()
    return status, json.loads(body) if status == 200 else body


def zero_extent(start: int, end: int, data: bool) -> dict[str, Any]:
    return {"start": start * MiB, "length": (end - start) * MiB, "zero": not data, "hole": not data}


def test_extents_report_data_and_holes(daemon: Daemon, holey: tuple[str, int]) -> None:
    ticket_id, _ = holey
    status, got = extents(daemon, ticket_id, "?context=zero")
    assert status == 200
    assert got == [
        zero_extent(0, 1, False),
        zero_extent(1, 2, True),
        zero_extent(2, 5, False),
        zero_extent(5, 6, True),
        zero_extent(6, 8, False),
    ]


def test_extents_default_context_is_zero(daemon: Daemon, holey: tuple[str, int]) -> None:
    ticket_id, _ = holey
    assert extents(daemon, ticket_id, "") == extents(daemon, ticket_id, "?context=zero")


def test_extents_with_start_and_length(daemon: Daemon, holey: tuple[str, int]) -> None:
    ticket_id, _ = holey
    status, got = extents(
        daemon, ticket_id, f"?context=zero&start={MiB + MiB // 2}&length={3 * MiB}"
    )
    assert status == 200
    assert got == [
        {"start": MiB + MiB // 2, "length": MiB // 2, "zero": False, "hole": False},
        {"start": 2 * MiB, "length": 2 * MiB + MiB // 2, "zero": True, "hole": True},
    ]


def test_extents_of_file_shorter_than_ticket_end_in_a_hole(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=4 * MiB, data=b"\x01" * MiB, ops=("read",))
    os.truncate(path, 2 * MiB)
    status, got = extents(daemon, ticket_id, "")
    assert status == 200
    assert got == [zero_extent(0, 1, True), zero_extent(1, 4, False)]


@pytest.mark.parametrize(
    "query,status",
    [
        ("?context=dirty", 404),  # the ticket is not a dirty ticket
        ("?context=bogus", 400),
        ("?start=x", 400),
        ("?start=-1", 400),
        (f"?start={8 * MiB}", 416),
        (f"?start=0&length={8 * MiB + 1}", 416),
    ],
)
def test_bad_extents_requests(
    daemon: Daemon, holey: tuple[str, int], query: str, status: int
) -> None:
    ticket_id, _ = holey
    got, _ = extents(daemon, ticket_id, query)
    assert got == status


# OPTIONS and /info/.


def options(daemon: Daemon, target: str) -> tuple[int, dict[str, str], Any]:
    conn = daemon.https()
    status, headers, body = request(conn, "OPTIONS", target)
    conn.close()
    return status, headers, json.loads(body) if status == 200 else body


def test_options_of_writable_ticket(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    status, headers, body = options(daemon, f"/images/{ticket_id}")
    assert status == 200
    assert set(headers["Allow"].split(",")) == {"OPTIONS", "GET", "PUT", "PATCH"}
    assert set(body["features"]) == {"checksum", "extents", "zero", "flush"}
    assert body["unix_socket"] == daemon.unix_socket
    assert body["unix_socket"].startswith("\0")
    assert body["max_readers"] == 8
    assert body["max_writers"] == 8


def test_options_of_read_only_ticket_drops_writes(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, ops=("read",))
    status, headers, body = options(daemon, f"/images/{ticket_id}")
    assert status == 200
    assert set(headers["Allow"].split(",")) == {"OPTIONS", "GET"}
    assert set(body["features"]) == {"checksum", "extents"}
    assert body["max_writers"] == 0


def test_options_star_needs_no_ticket(daemon: Daemon) -> None:
    status, headers, body = options(daemon, "/images/*")
    assert status == 200
    assert "PUT" in headers["Allow"].split(",")
    assert set(body["features"]) == {"checksum", "extents", "zero", "flush"}
    assert body["unix_socket"] == daemon.unix_socket


def test_unix_socket_from_options_serves_requests(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"hello")
    _, _, body = options(daemon, f"/images/{ticket_id}")
    conn = UnixHTTPConnection(body["unix_socket"], timeout=daemon.limits.io)
    status, _, got = request(conn, "GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-4"})
    conn.close()
    assert (status, got) == (206, b"hello")


def test_info_reports_version(daemon: Daemon) -> None:
    conn = daemon.unix()
    status, headers, body = request(conn, "GET", "/info/")
    conn.close()
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["version"]


def test_cors_preflight_allows_browser_upload(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.https()
    status, headers, _ = request(
        conn,
        "OPTIONS",
        f"/images/{ticket_id}",
        headers={"Origin": "https://engine.example", "Access-Control-Request-Method": "PUT"},
    )
    conn.close()
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "PUT" in headers["Access-Control-Allow-Methods"]


def test_unknown_path_is_404_without_echoing_it(daemon: Daemon) -> None:
    conn = daemon.unix()
    status, _, body = request(conn, "GET", "/nothing/secret-ticket-id")
    conn.close()
    assert status == 404
    assert b"secret-ticket-id" not in body


def test_unsupported_method_is_405_with_allow(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    status, headers, _ = request(conn, "DELETE", f"/images/{ticket_id}")
    conn.close()
    assert status == 405
    assert "PUT" in headers["Allow"]
