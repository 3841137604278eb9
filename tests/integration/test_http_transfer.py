"""Moving bytes through a real daemon: streams, random I/O, ranges, keep-alive."""

from __future__ import annotations

import hashlib
import http.client
import random
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2
TRANSPORTS = ("https", "unix")


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path, size: int) -> str:
    with open(path, "rb") as f:
        return sha256(f.read(size))


def connect(daemon: Daemon, transport: str) -> http.client.HTTPConnection:
    return daemon.https() if transport == "https" else daemon.unix()


def get(
    conn: http.client.HTTPConnection, ticket_id: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request("GET", f"/images/{ticket_id}", headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_upload_then_download_keeps_checksum(daemon: Daemon, transport: str) -> None:
    size = 5 * MiB + 4097  # not a multiple of the sector or the buffer
    data = random_bytes(size, seed=1)
    ticket_id, path = daemon.add_ticket(size=size)
    conn = connect(daemon, transport)
    conn.request("PUT", f"/images/{ticket_id}", body=data, headers={"Content-Length": str(size)})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    assert file_sha256(path, size + 1) == sha256(data)

    resp, got = get(conn, ticket_id)
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(size)
    assert sha256(got) == sha256(data)
    conn.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_chunked_upload_writes_every_chunk(daemon: Daemon, transport: str) -> None:
    size = 3 * MiB
    data = random_bytes(size, seed=2)
    # Uneven chunks, so chunk and buffer boundaries never line up.
    pieces = [data[i : i + 300_001] for i in range(0, size, 300_001)]
    ticket_id, path = daemon.add_ticket(size=size)
    conn = connect(daemon, transport)
    conn.request(
        "PUT",
        f"/images/{ticket_id}",
        body=iter(pieces),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    assert file_sha256(path, size + 1) == sha256(data)
    conn.close()


def test_chunked_upload_past_ticket_size_is_416(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    conn.request(
        "PUT",
        f"/images/{ticket_id}",
        body=iter([b"x" * MiB, b"y"]),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )
    resp = conn.getresponse()
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{MiB}"
    conn.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_random_io_with_content_range(daemon: Daemon, transport: str) -> None:
    size = 8 * MiB
    ticket_id, path = daemon.add_ticket(size=size)
    # Unaligned offsets and lengths exercise the O_DIRECT head and tail.
    writes = [(7 * MiB + 3, 100_000), (0, 4096), (513, 1000), (3 * MiB - 1, MiB + 2)]
    expected = bytearray(size)
    conn = connect(daemon, transport)
    for seed, (offset, length) in enumerate(writes):
        chunk = random_bytes(length, seed=10 + seed)
        expected[offset : offset + length] = chunk
        conn.request(
            "PUT",
            f"/images/{ticket_id}?flush=n",
            body=chunk,
            headers={
                "Content-Range": f"bytes {offset}-{offset + length - 1}/*",
                "Content-Length": str(length),
            },
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    for offset, length in [*writes, (0, size), (MiB, 10)]:
        resp, got = get(conn, ticket_id, {"Range": f"bytes={offset}-{offset + length - 1}"})
        assert resp.status == 206
        assert resp.getheader("Content-Range") == f"bytes {offset}-{offset + length - 1}/{size}"
        assert got == expected[offset : offset + length]
    conn.close()
    assert file_sha256(path, size) == sha256(bytes(expected))


def test_content_range_with_complete_length(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    conn = daemon.unix()
    conn.request(
        "PUT", f"/images/{ticket_id}", body=b"abc", headers={"Content-Range": f"bytes 10-12/{MiB}"}
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    conn.close()
    with open(path, "rb") as f:
        assert f.read(16) == b"\0" * 10 + b"abc" + b"\0" * 3


def test_keep_alive_serves_many_requests_on_one_connection(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    conn = daemon.https()
    conn.connect()
    sock = conn.sock
    for i in range(5):
        body = bytes([i]) * 1000
        conn.request(
            "PUT",
            f"/images/{ticket_id}?flush=n",
            body=body,
            headers={"Content-Range": f"bytes {i * 1000}-{i * 1000 + 999}/*"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
        resp, got = get(conn, ticket_id, {"Range": f"bytes={i * 1000}-{i * 1000 + 999}"})
        assert resp.status == 206
        assert got == body
        assert resp.getheader("Connection") is None
    # http.client would have reconnected silently had the server closed.
    assert conn.sock is sock
    conn.close()


@pytest.mark.parametrize("method", ["PUT", "GET"])
def test_close_query_closes_connection_after_reply(daemon: Daemon, method: str) -> None:
    ticket_id, _ = daemon.add_ticket(size=4096)
    sock = daemon.raw_unix()
    body = b"z" * 4096 if method == "PUT" else b""
    sock.sendall(
        f"{method} /images/{ticket_id}?close=y HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    reply = _read_until_eof(sock)
    sock.close()
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nConnection: close" in head
    if method == "GET":
        assert rest == b"z" * 4096 or rest == b"\0" * 4096


def _read_until_eof(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        data = sock.recv(65536)  # times out (test fails) if the server keeps it open
        if not data:
            return bytes(out)
        out += data


def test_flush_n_and_flush_y_both_store_data(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=2 * MiB)
    conn = daemon.unix()
    for i, flush in enumerate(("n", "y")):
        conn.request(
            "PUT",
            f"/images/{ticket_id}?flush={flush}",
            body=b"%d" % i * MiB,
            headers={"Content-Range": f"bytes {i * MiB}-{(i + 1) * MiB - 1}/*"},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
    conn.request("PUT", f"/images/{ticket_id}?flush=maybe", body=b"x")
    resp = conn.getresponse()
    assert resp.status == 400
    assert b"flush" in resp.read()
    conn.close()
    with open(path, "rb") as f:
        assert f.read() == b"0" * MiB + b"1" * MiB


# Ranges.

SIZE = 100_000


@pytest.fixture(scope="module")
def ranged(daemon: Daemon) -> tuple[str, bytes]:
    data = random_bytes(SIZE, seed=3)
    ticket_id, _ = daemon.add_ticket(size=SIZE, data=data, ops=("read",))
    return ticket_id, data


@pytest.mark.parametrize(
    "header,start,end",
    [
        ("bytes=0-0", 0, 1),
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=99000-200000", 99000, SIZE),  # a last byte past the end means the end
        ("bytes=-500", SIZE - 500, SIZE),  # suffix
        ("bytes=-200000", 0, SIZE),  # suffix longer than the image
        ("bytes=90000-", 90000, SIZE),  # open-ended
    ],
)
def test_get_with_range_is_206_with_content_range(
    daemon: Daemon, ranged: tuple[str, bytes], header: str, start: int, end: int
) -> None:
    ticket_id, data = ranged
    conn = daemon.https()
    resp, got = get(conn, ticket_id, {"Range": header})
    conn.close()
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes {start}-{end - 1}/{SIZE}"
    assert resp.getheader("Content-Length") == str(end - start)
    assert got == data[start:end]


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 10}", "bytes=-0"])
def test_get_range_past_end_is_416_with_size(
    daemon: Daemon, ranged: tuple[str, bytes], header: str
) -> None:
    ticket_id, _ = ranged
    conn = daemon.unix()
    resp, _ = get(conn, ticket_id, {"Range": header})
    conn.close()
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{SIZE}"


def test_get_without_range_reads_whole_image(daemon: Daemon, ranged: tuple[str, bytes]) -> None:
    ticket_id, data = ranged
    conn = daemon.unix()
    resp, got = get(conn, ticket_id)
    conn.close()
    assert resp.status == 200
    assert resp.getheader("Content-Range") is None
    assert got == data
