"""Downloads that go wrong, on every data path of a real daemon.

Paths: the unix socket with an aligned range (spliced: file -> pipe ->
socket, or NBD socket -> pipe -> socket), the unix socket with an
unaligned range (the buffered pipeline) and TLS (buffered, through the
TLS layer). Faults: a client that stops reading, an image truncated under
a running download, an image deleted under a running download. Whatever
happens, the client gets either all its bytes or fewer than Content-Length
and a closed connection, within a bound, never a hang.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import ssl
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from storage.qemu_nbd import QemuNbd

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2
SIZE = 48 * MiB
# Read before the fault, so the download is in its steady state.
PREFIX = 4 * MiB
# Where a truncated image ends: not a multiple of any sector size, so the
# read that crosses it is short before the next one finds nothing.
CUT = 8 * MiB + 1000
# Bound on any wait of the client for the daemon: a hang fails the test.
WAIT = 20.0
# The client's receive buffer: small, so a stalled client holds little.
RCVBUF = 128 * 1024
STALL_TIMEOUT = 3
# What a loaded machine may add to a deadline.
MARGIN = 2.0


@dataclass(frozen=True)
class Route:
    """One way to download: the socket, and the range that selects the lane."""

    name: str
    tls: bool
    # None downloads the whole image; an unaligned start takes the buffered
    # pipeline on the unix socket.
    start: int | None


SPLICE = Route("unix-splice", tls=False, start=None)
BUFFERED = Route("unix-buffered", tls=False, start=1)
TLS = Route("tls", tls=True, start=None)


class Download:
    """A GET read by hand, so the test decides when the client reads."""

    def __init__(self, daemon: Daemon, ticket_id: str, route: Route) -> None:
        self.sock = _connect(daemon, route.tls)
        self.offset = route.start or 0
        headers = f"Range: bytes={route.start}-\r\n" if route.start is not None else ""
        self.sock.sendall(
            f"GET /images/{ticket_id} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode()
        )
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before the head: {bytes(head)!r}"
            head += chunk
        raw, _, rest = bytes(head).partition(b"\r\n\r\n")
        self.status = int(raw.split()[1])
        match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", raw)
        assert match, raw
        self.length = int(match.group(1))
        self.body = bytearray(rest)

    def read(self, n: int) -> None:
        """Read until the body has n bytes; fails on a close before."""
        while len(self.body) < n:
            chunk = self.sock.recv(min(MiB, n - len(self.body)))
            assert chunk, f"closed after {len(self.body)} of {n} bytes"
            self.body += chunk

    def read_to_close(self) -> bool:
        """Read until the daemon closes; True if it closed within WAIT."""
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(MiB)
            except (ConnectionResetError, ssl.SSLError):
                # A close with unread input resets; TLS may end without
                # close_notify: both are a closed connection.
                return True
            except TimeoutError:
                return False
            if not chunk:
                return True
            self.body += chunk
        return False

    def close(self) -> None:
        self.sock.close()


def _connect(daemon: Daemon, tls: bool) -> socket.socket:
    if not tls:
        sock = daemon.raw_unix(WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        return sock
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    raw.settimeout(WAIT)
    try:
        raw.connect(("127.0.0.1", daemon.port))
        return daemon.ssl_context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


@contextlib.contextmanager
def download(daemon: Daemon, ticket_id: str, route: Route) -> Iterator[Download]:
    d = Download(daemon, ticket_id, route)
    try:
        yield d
    finally:
        d.close()


# Images and tickets.


@dataclass
class Image:
    ticket_id: str
    path: Path
    data: bytes
    transfer_id: str


class Images:
    """Images in the daemon's directory, as files or behind qemu-nbd."""

    def __init__(self, daemon: Daemon, stack: contextlib.ExitStack) -> None:
        self.daemon = daemon
        self._stack = stack

    def file(self, **extra: Any) -> Image:
        data = random.Random(7).randbytes(SIZE)
        ticket_id, path = self.daemon.add_ticket(size=SIZE, data=data, ops=("read",), **extra)
        self._stack.callback(self.daemon.result, "Ticket.remove", uuid=ticket_id)
        return Image(ticket_id, path, data, f"t-{ticket_id[:8]}")

    def nbd(self, **extra: Any) -> Image:
        data = random.Random(8).randbytes(SIZE)
        name = uuidlib.uuid4().hex[:8]
        path = self.daemon.images / f"{name}.raw"
        path.write_bytes(data)
        server = self._stack.enter_context(
            QemuNbd(str(path), "raw", str(self.daemon.dir / f"{name}.sock"), read_only=True)
        )
        ticket_id = str(uuidlib.uuid4())
        ticket: dict[str, Any] = {
            "uuid": ticket_id,
            "size": SIZE,
            "ops": ["read"],
            "timeout": 300,
            "url": server.url,
            "transfer_id": f"nbd-{ticket_id[:8]}",
        }
        ticket.update(extra)
        self.daemon.result("Ticket.add", ticket=ticket)
        self._stack.callback(self.daemon.result, "Ticket.remove", uuid=ticket_id)
        return Image(ticket_id, path, data, ticket["transfer_id"])


@pytest.fixture
def images(daemon: Daemon) -> Iterator[Images]:
    with contextlib.ExitStack() as stack:
        yield Images(daemon, stack)


def make_image(images: Images, backend: str, **extra: Any) -> Image:
    return images.nbd(**extra) if backend == "nbd" else images.file(**extra)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def error_lines(daemon: Daemon, transfer_id: str) -> list[str]:
    return [
        line
        for line in daemon.log().splitlines()
        if f"transfer={transfer_id}" in line and "ERROR" in line
    ]


# A client that stops reading.


def stalled_for(daemon: Daemon, image: Image, route: Route) -> float:
    """Seconds from the client's last read until the daemon drops it."""
    with download(daemon, image.ticket_id, route) as d:
        d.read(PREFIX)
        stopped = time.monotonic()
        # The client reads nothing more; the ticket shows when the daemon
        # gave up (a TCP close cannot reach a client whose window is full).
        closed = wait_for(
            lambda: daemon.status(image.ticket_id)["connections"] == 0,
            STALL_TIMEOUT + WAIT,
        )
        elapsed = time.monotonic() - stopped
        assert closed, f"{route.name}: still connected after {elapsed:.1f}s"
        return elapsed


def test_stalled_reader_is_dropped_after_inactivity_timeout_on_every_path(
    daemon: Daemon, images: Images
) -> None:
    file = images.file(inactivity_timeout=STALL_TIMEOUT)
    nbd = images.nbd(inactivity_timeout=STALL_TIMEOUT)
    spliced = {
        "file unix-splice": stalled_for(daemon, file, SPLICE),
        "nbd unix-splice": stalled_for(daemon, nbd, SPLICE),
    }
    buffered = {
        "file tls": stalled_for(daemon, file, TLS),
        "file unix-buffered": stalled_for(daemon, file, BUFFERED),
        "nbd tls": stalled_for(daemon, nbd, TLS),
    }
    seen = {**spliced, **buffered}
    assert max(seen.values()) < STALL_TIMEOUT + MARGIN, seen
    # The whole stall counts, on every path: the spliced ones take no
    # longer than the buffered ones measured here, and never less than
    # the timeout (the client was not dropped early).
    assert max(spliced.values()) < max(buffered.values()) + STALL_TIMEOUT / 2, seen
    assert min(spliced.values()) >= STALL_TIMEOUT * 0.95, seen


@pytest.mark.parametrize("backend", ["file", "nbd"])
def test_slow_reader_on_the_spliced_path_is_not_dropped(
    daemon: Daemon, images: Images, backend: str
) -> None:
    # Pauses shorter than the timeout, again and again: the stall is
    # counted from the last byte taken, not from the start of the request.
    image = make_image(images, backend, inactivity_timeout=STALL_TIMEOUT)
    with download(daemon, image.ticket_id, SPLICE) as d:
        for step in range(1, 4):
            d.read(step * PREFIX)
            time.sleep(STALL_TIMEOUT * 0.6)
        d.read(d.length)
        assert d.body == image.data
    assert error_lines(daemon, image.transfer_id) == []


# Storage that shrinks or vanishes under a download.


def assert_short_and_closed(d: Download, image: Image) -> None:
    closed = d.read_to_close()
    assert closed, f"not closed within {WAIT}s after {len(d.body)} bytes"
    assert PREFIX <= len(d.body) < d.length
    # Short, but what came is the image's own bytes.
    assert d.body == image.data[d.offset : d.offset + len(d.body)]


def assert_one_error_line(daemon: Daemon, image: Image) -> None:
    lines = wait_for_lines(daemon, image.transfer_id)
    assert len(lines) == 1, lines
    assert "status=500" in lines[0], lines
    assert "reason=Image ended at offset" in lines[0], lines
    assert "Traceback" not in daemon.log()


def wait_for_lines(daemon: Daemon, transfer_id: str) -> list[str]:
    # The daemon logs after the client sees the close; give it a moment.
    wait_for(lambda: bool(error_lines(daemon, transfer_id)), WAIT)
    return error_lines(daemon, transfer_id)


@pytest.mark.parametrize("route", [SPLICE, BUFFERED, TLS], ids=lambda p: p.name)
def test_file_truncated_under_download_ends_short_and_closed(
    daemon: Daemon, images: Images, route: Route
) -> None:
    image = images.file()
    with download(daemon, image.ticket_id, route) as d:
        d.read(PREFIX)
        os.truncate(image.path, CUT)
        assert_short_and_closed(d, image)
    assert_one_error_line(daemon, image)


@pytest.mark.parametrize("route", [SPLICE, TLS], ids=lambda p: p.name)
def test_nbd_image_truncated_under_download_reads_as_zeros(
    daemon: Daemon, images: Images, route: Route
) -> None:
    # qemu-nbd keeps the export's size from its start and reads past the
    # end of the file as zeros: the download is whole, with zeros past the
    # cut, and the daemon cannot tell.
    image = images.nbd()
    with download(daemon, image.ticket_id, route) as d:
        d.read(PREFIX)
        os.truncate(image.path, CUT)
        d.read(d.length)
    assert d.body[:CUT] == image.data[:CUT]
    assert d.body[PREFIX + SIZE // 2 :] == bytes(SIZE - PREFIX - SIZE // 2)
    assert error_lines(daemon, image.transfer_id) == []


@pytest.mark.parametrize(
    "backend, route",
    [("file", SPLICE), ("file", BUFFERED), ("file", TLS), ("nbd", SPLICE), ("nbd", TLS)],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_image_deleted_under_download_is_sent_whole(
    daemon: Daemon, images: Images, backend: str, route: Route
) -> None:
    # An unlinked file keeps its data while a descriptor is open: the
    # download that opened it runs to the end, with the original bytes.
    image = make_image(images, backend)
    with download(daemon, image.ticket_id, route) as d:
        d.read(PREFIX)
        image.path.unlink()
        d.read(d.length)
        assert d.body == image.data[d.offset :]
    assert error_lines(daemon, image.transfer_id) == []
