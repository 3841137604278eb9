"""Faults, with nothing lost: a real daemon killed mid-upload, a full file
system, and a thousand ticket cycles beside a running download."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.rawhttp import closed_by_server, read_reply
from tests.support.loopfs import ext4_on_loop, needs_root

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
MiB = 1024**2


def put(
    conn: http.client.HTTPConnection, ticket_id: str, offset: int, data: bytes, flush: str = "y"
) -> int:
    conn.request(
        "PUT",
        f"/images/{ticket_id}?flush={flush}",
        body=data,
        headers={"Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*"},
    )
    res = conn.getresponse()
    res.read()
    return int(res.status)


def get(d: Daemon, ticket_id: str, offset: int, length: int) -> bytes:
    conn = d.unix()
    try:
        conn.request(
            "GET",
            f"/images/{ticket_id}",
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
        )
        res = conn.getresponse()
        body = res.read()
        assert res.status == 206, body
        return body
    finally:
        conn.close()


def url_ticket(path: Path, size: int, ops: list[str], **extra: Any) -> dict[str, Any]:
    ticket = {
        "uuid": str(uuidlib.uuid4()),
        "size": size,
        "ops": ops,
        "timeout": 300,
        "url": path.as_uri(),
        "transfer_id": f"fault-{uuidlib.uuid4().hex[:8]}",
    }
    ticket.update(extra)
    return ticket


# kill -9 during flush=y uploads: every acknowledged byte is on disk.

WRITERS = 4
PIECE = MiB
# Killed once this many pieces are acknowledged: far from the end of the
# image, so writers are always mid-request, however fast the machine.
KILL_AFTER = 16


def test_kill_during_flushed_uploads_keeps_every_acknowledged_byte(
    make_daemon: MakeDaemon,
) -> None:
    d = make_daemon()
    size = 1024 * MiB  # sparse: only what is written before the kill is stored
    image = d.images / "crash.raw"
    with open(image, "wb") as f:
        f.truncate(size)
    ticket = url_ticket(image, size, ["write"])
    d.result("Ticket.add", ticket=ticket)
    acked: dict[int, bytes] = {}
    lock = threading.Lock()
    stop = threading.Event()
    pieces = list(range(0, size, PIECE))
    random.Random(9).shuffle(pieces)

    def writer(n: int) -> None:
        # Disjoint offsets per writer; unaligned ones too, so the daemon's
        # read-modify-write path is killed mid-way as well.
        conn = d.https() if n % 2 else d.unix()
        try:
            for i, offset in enumerate(pieces[n::WRITERS]):
                if stop.is_set():
                    return
                data = os.urandom(PIECE - (i % 3) * 333)
                try:
                    status = put(conn, ticket["uuid"], offset, data)
                except (OSError, http.client.HTTPException):
                    return  # the daemon died under this request: not acknowledged
                assert status == 200
                with lock:
                    acked[offset] = data
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.005)
    d.kill()
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert acked, "nothing was acknowledged before the kill"
    assert len(acked) < len(pieces), "every upload finished before the kill"

    again = make_daemon(directory=d.dir)
    reader = url_ticket(image, size, ["read"])
    again.result("Ticket.add", ticket=reader)
    for offset, data in sorted(acked.items()):
        assert get(again, reader["uuid"], offset, len(data)) == data, f"lost at {offset}"
    again.result("Ticket.remove", uuid=reader["uuid"])


# ENOSPC: 507 with a clear message, the bytes before the failure intact.


def common_prefix(a: bytes, b: bytes, block: int = 64 * KiB) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n : n + block] == b[n : n + block]:
        n += block
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def put_raw(
    sock: socket.socket, ticket_id: str, offset: int, body: bytes
) -> tuple[int, str, str | None]:
    """PUT body while reading the reply: the daemon may answer before it
    has read the whole body. Returns status, message and Connection header."""
    head = (
        f"PUT /images/{ticket_id}?flush=y HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Content-Range: bytes {offset}-{offset + len(body) - 1}/*\r\n\r\n"
    ).encode()

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(head + body)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        res, text = read_reply(sock, "PUT")
    finally:
        sender.join(30)
    return res.status, text.decode(), res.getheader("Connection")


@contextlib.contextmanager
def ticket_on_full_storage(d: Daemon, *, sparse: bool) -> Iterator[dict[str, Any]]:
    """A write ticket for a 64 MiB image on a 24 MiB ext4: writing it all
    fills the file system."""
    size = 64 * MiB
    with ext4_on_loop(d.images, "fs", size=24 * MiB, reserve=False) as fs:
        image = fs / "disk.raw"
        with open(image, "wb") as f:
            f.truncate(size)
        ticket = url_ticket(image, size, ["write"], sparse=sparse)
        d.result("Ticket.add", ticket=ticket)
        yield ticket


@pytest.mark.loop
def test_full_file_system_is_507_and_keeps_the_bytes_before(make_daemon: MakeDaemon) -> None:
    needs_root()
    d = make_daemon()
    with ticket_on_full_storage(d, sparse=True) as ticket:
        first = os.urandom(4 * MiB)
        conn = d.unix()
        assert put(conn, ticket["uuid"], 0, first) == 200
        conn.close()

        rest = os.urandom(40 * MiB)  # more than the file system holds
        sock = d.raw_unix(timeout=30)
        try:
            status, message, connection = put_raw(sock, ticket["uuid"], len(first), rest)
            assert status == 507, message
            assert "Not enough space on the storage" in message
            assert "No space left on device" in message
            # The body was cut off: the daemon closes the connection.
            assert connection == "close"
            assert closed_by_server(sock)
        finally:
            sock.close()

        # The acknowledged bytes are intact; of the failed upload, what
        # reached the disk is its beginning, and the rest reads as zeros.
        assert get(d, ticket["uuid"], 0, len(first)) == first
        stored = get(d, ticket["uuid"], len(first), len(rest))
        n = common_prefix(stored, rest)
        assert n > 0, "nothing of the failed upload reached the disk"
        assert stored[n:] == bytes(len(stored) - n), "garbage after the failure point"
        d.result("Ticket.remove", uuid=ticket["uuid"])
    assert "ERROR status=507" in d.log()


@pytest.mark.loop
def test_allocating_zero_on_a_full_file_system_is_507(make_daemon: MakeDaemon) -> None:
    needs_root()
    d = make_daemon()
    # Not sparse: zero must allocate, which a 24 MiB file system cannot.
    with ticket_on_full_storage(d, sparse=False) as ticket:
        conn = d.unix()
        conn.request(
            "PATCH",
            f"/images/{ticket['uuid']}",
            body=b'{"op": "zero", "offset": 0, "size": %d}' % ticket["size"],
        )
        res = conn.getresponse()
        text = res.read().decode()
        conn.close()
        assert res.status == 507, text
        assert "Not enough space on the storage" in text
        d.result("Ticket.remove", uuid=ticket["uuid"])


# 1,000 add/remove cycles beside a running download: nothing grows.

CYCLES = 1000
WARMUP = 100
MAX_FD_GROWTH = 8
MAX_THREAD_GROWTH = 4
MAX_RSS_GROWTH = 24 * MiB


def usage(pid: int) -> tuple[int, int, int]:
    """Open fds, threads and resident bytes of pid."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    threads = int(fields["Threads"])
    rss = int(fields["VmRSS"].split()[0]) * KiB
    return fds, threads, rss


def settled(pid: int, timeout: float = 5.0) -> tuple[int, int, int]:
    """Usage once short-lived threads (hooks, connections) have ended."""
    deadline = time.monotonic() + timeout
    best = usage(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = usage(pid)
        best = (min(best[0], now[0]), min(best[1], now[1]), min(best[2], now[2]))
        if now[:2] == best[:2]:
            break
    return best


def test_thousand_ticket_cycles_beside_a_download_leak_nothing(
    make_daemon: MakeDaemon,
) -> None:
    d = make_daemon()
    size = 256 * MiB
    image = d.images / "long.raw"
    with open(image, "wb") as f:
        f.truncate(size)
    download = url_ticket(image, size, ["read"])
    d.result("Ticket.add", ticket=download)
    stop = threading.Event()
    downloaded = [0]
    errors: list[BaseException] = []

    def downloader() -> None:
        conn = d.unix(timeout=30)
        try:
            while not stop.is_set():
                conn.request("GET", f"/images/{download['uuid']}")
                res = conn.getresponse()
                while chunk := res.read(MiB):
                    downloaded[0] += len(chunk)
                    if stop.is_set():
                        return
                assert res.status == 200
        except BaseException as e:
            errors.append(e)
        finally:
            conn.close()

    small = d.images / "cycle.raw"
    with open(small, "wb") as f:
        f.truncate(MiB)

    def cycle(i: int) -> None:
        ticket = url_ticket(small, MiB, ["read", "write"] if i % 2 else ["read"])
        d.result("Ticket.add", ticket=ticket)
        if i % 10 == 0:
            # Now and then the ticket is used: a connection, a backend.
            assert get(d, ticket["uuid"], 0, 4 * KiB) == bytes(4 * KiB)
        assert d.result("Ticket.remove", uuid=ticket["uuid"]) is True

    thread = threading.Thread(target=downloader)
    thread.start()
    try:
        for i in range(WARMUP):
            cycle(i)
        before = settled(d.proc.pid)
        moved_before = downloaded[0]
        started = time.monotonic()
        for i in range(CYCLES):
            cycle(i)
        seconds = time.monotonic() - started
        after = settled(d.proc.pid)
        assert downloaded[0] > moved_before, "the download did not run during the cycles"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not errors, errors
    assert [t["uuid"] for t in d.result("Ticket.list")] == [download["uuid"]]
    fd_growth, thread_growth, rss_growth = (a - b for a, b in zip(after, before, strict=True))
    print(f"cycles={CYCLES} seconds={seconds:.1f} before={before} after={after}")
    assert fd_growth <= MAX_FD_GROWTH, (before, after)
    assert thread_growth <= MAX_THREAD_GROWTH, (before, after)
    assert rss_growth <= MAX_RSS_GROWTH, (before, after)
