"""The pipes and helper threads of spliced downloads live as long as their
connection: its keep-alive downloads reuse them, and they are gone when the
client closes the connection or drops it in the middle of a body. A unix
socket connection's send buffer lets a download run ahead of its client by
``[http] unix_send_buffer``."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import struct
import termios
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, MakeDaemon

MiB = 1024**2
SIZE = 16 * MiB
# Aligned and at least zerocopy's minimum: every download is spliced.
CHUNK = 2 * MiB
REQUESTS = 40
SETTLE = 10.0


def usage(pid: int) -> tuple[int, int]:
    """Open fds and threads of the daemon."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def settled(pid: int, want: tuple[int, int]) -> tuple[int, int]:
    """The daemon's usage once it equals want, or the last seen after SETTLE."""
    deadline = time.monotonic() + SETTLE
    while (now := usage(pid)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def idle_usage(pid: int) -> tuple[int, int]:
    """The usage of a daemon with no connection, once it stops changing."""
    last = usage(pid)
    for _ in range(40):
        time.sleep(0.05)
        now = usage(pid)
        if now == last:
            return now
        last = now
    return last


def get(sock: socket.socket, ticket_id: str, start: int, length: int) -> bytes:
    sock.sendall(
        f"GET /images/{ticket_id} HTTP/1.1\r\nHost: localhost\r\n"
        f"Range: bytes={start}-{start + length - 1}\r\n\r\n".encode()
    )
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the head: {bytes(data)!r}"
        data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 "), head
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert match and int(match.group(1)) == length, head
    out = bytearray(body)
    while len(out) < length:
        chunk = sock.recv(min(MiB, length - len(out)))
        assert chunk, f"closed after {len(out)} of {length} bytes"
        out += chunk
    return bytes(out)


def test_keepalive_downloads_reuse_pipes_and_helpers(daemon: Daemon) -> None:
    data = os.urandom(SIZE)
    ticket_id, _ = daemon.add_ticket(size=SIZE, data=data, ops=("read",))
    pid = daemon.proc.pid
    before = idle_usage(pid)
    with daemon.raw_unix() as sock:
        assert get(sock, ticket_id, 0, CHUNK) == data[:CHUNK]
        first = usage(pid)
        # The helpers wait for the next download (more than the
        # connection's own thread).
        assert first[1] > before[1] + 1
        for i in range(1, REQUESTS):
            start = i * CHUNK % SIZE
            assert get(sock, ticket_id, start, CHUNK) == data[start : start + CHUNK]
            # Nothing grows with the requests.
            assert usage(pid) == first
    assert settled(pid, before) == before


def test_connection_dropped_mid_body_releases_pipes_and_helpers(daemon: Daemon) -> None:
    data = os.urandom(SIZE)
    ticket_id, _ = daemon.add_ticket(size=SIZE, data=data, ops=("read",))
    pid = daemon.proc.pid
    before = idle_usage(pid)
    for _ in range(3):
        sock = daemon.raw_unix()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            assert get(sock, ticket_id, 0, CHUNK) == data[:CHUNK]
            sock.sendall(f"GET /images/{ticket_id} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            assert sock.recv(MiB)
        finally:
            sock.close()
    assert settled(pid, before) == before


# How far a download runs ahead of a client that does not read.

WMEM_MAX = Path("/proc/sys/net/core/wmem_max")


def queued_for_client(daemon: Daemon, ticket_id: str) -> int:
    """Bytes of a download waiting in the socket of a client that reads nothing."""
    with daemon.raw_unix() as sock:
        sock.sendall(f"GET /images/{ticket_id} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        deadline = time.monotonic() + SETTLE
        last = -1
        while time.monotonic() < deadline:
            time.sleep(0.2)
            (queued,) = struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))
            assert isinstance(queued, int)
            if queued == last:
                return queued
            last = queued
        return last


@pytest.mark.skipif(
    int(WMEM_MAX.read_text()) < 2 * MiB, reason="net.core.wmem_max caps SO_SNDBUF below 2 MiB"
)
def test_unix_download_runs_ahead_of_its_client_by_the_send_buffer(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=SIZE, data=os.urandom(SIZE), ops=("read",))
    # More than the default socket buffer (212 KiB) plus the pipes hold.
    assert queued_for_client(daemon, ticket_id) >= 2 * MiB


def test_unix_send_buffer_zero_keeps_the_kernel_default(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(http={"unix_send_buffer": 0})
    ticket_id, _ = daemon.add_ticket(size=SIZE, data=os.urandom(SIZE), ops=("read",))
    assert queued_for_client(daemon, ticket_id) < MiB
