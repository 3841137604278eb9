"""Support for hostile-input corpora: the scene, the guard, raw exchanges.

The fixtures that hand these to tests live in this directory's conftest.py.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

IMAGE_SIZE = 1024**2
# Long enough for any reply to a refused request; a close is seen at once.
REPLY_TIMEOUT = 5.0
# Ticket fields that no request on the data path may change.
TICKET_FIELDS = ("uuid", "size", "ops", "timeout", "url", "transfer_id", "sparse", "dirty")


def pattern(seed: int, size: int = IMAGE_SIZE) -> bytes:
    """Bytes in which every 4 KiB block differs, so a misplaced write shows."""
    fill = hashlib.sha256(b"%d" % seed).digest() * 128
    return b"".join((i.to_bytes(8, "big") + fill)[:4096] for i in range(size // 4096))


@dataclass
class Image:
    """A ticket and the file it names, with the bytes it started with (a file
    that no ticket names has no ticket id)."""

    ticket_id: str
    path: Path
    original: bytes

    def restore(self) -> None:
        with open(self.path, "r+b") as f:
            f.write(self.original)
            f.truncate(len(self.original))
            f.flush()
            os.fsync(f.fileno())


class Scene:
    """A writable ticket, a read-only ticket on another image, and a file no
    ticket names, in one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.writable = self._image(daemon, seed=1, ops=("read", "write"))
        self.readonly = self._image(daemon, seed=2, ops=("read",))
        self.unrelated = Image("", daemon.dir / "unrelated.bin", pattern(3, 64 * 1024))
        self.unrelated.path.write_bytes(self.unrelated.original)
        self.ticket_contents = self.tickets()
        self._log_seen = 0
        self.check_healthy()

    @staticmethod
    def _image(daemon: Daemon, *, seed: int, ops: tuple[str, ...]) -> Image:
        data = pattern(seed)
        ticket_id, path = daemon.add_ticket(size=len(data), ops=ops, data=data, sparse=False)
        return Image(ticket_id, path, data)

    # What must not change.

    def checksums(self) -> dict[str, str]:
        paths = {
            "writable": self.writable.path,
            "readonly": self.readonly.path,
            "unrelated": self.unrelated.path,
        }
        return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in paths.items()}

    def restore(self) -> None:
        for image in (self.writable, self.readonly, self.unrelated):
            image.restore()

    def tickets(self) -> dict[str, tuple[str, ...]]:
        """Every ticket's content, without what moves with time or traffic."""
        return {
            s["uuid"]: tuple(repr(s.get(k)) for k in TICKET_FIELDS)
            for s in self.daemon.result("Ticket.list")
        }

    def check_healthy(self) -> None:
        """Alive, answering, and no traceback logged since the last check."""
        d = self.daemon
        assert d.proc.poll() is None, f"daemon exited with {d.proc.returncode}"
        log = d.log()
        new, self._log_seen = log[self._log_seen :], len(log)
        assert "Traceback" not in new, f"daemon logged a traceback:\n{new[-5000:]}"
        assert "uptime" in d.result("Service.info")

    # Talking to it.

    def connect(self, transport: str) -> socket.socket:
        """A raw connection: "unix" (plain HTTP) or "tls" (HTTPS on TCP)."""
        if transport == "unix":
            return self.daemon.raw_unix(timeout=REPLY_TIMEOUT)
        return self.daemon.raw_tls(timeout=REPLY_TIMEOUT)

    def fill(self, raw: bytes) -> bytes:
        """raw with {rw} and {ro} replaced by the ids of the two tickets."""
        return raw.replace(b"{rw}", self.writable.ticket_id.encode()).replace(
            b"{ro}", self.readonly.ticket_id.encode()
        )


class Guard:
    """Checks after a case that it left the scene as it found it."""

    def __init__(self, scene: Scene) -> None:
        self._scene = scene
        self._before = scene.checksums()
        self._write: tuple[int, bytes] | None = None

    def expect_write(self, offset: int, data: bytes) -> None:
        """This case is a valid write of data at offset of the writable image."""
        self._write = (offset, data)

    def check(self) -> None:
        scene = self._scene
        scene.check_healthy()
        if self._write is not None:
            offset, data = self._write
            image = scene.writable
            got = image.path.read_bytes()
            image.restore()
            assert got[offset : offset + len(data)] == data, "the valid write is not on disk"
            expected = image.original[:offset] + data + image.original[offset + len(data) :]
            assert got == expected, "bytes outside the written range changed"
        changed = [k for k, v in scene.checksums().items() if v != self._before[k]]
        if changed:
            # Put it back, so that the next case starts from the same scene.
            scene.restore()
        assert not changed, f"changed by a request that should not write: {changed}"
        assert scene.tickets() == scene.ticket_contents, "a ticket was added or changed"


# Raw exchanges.


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def exchange(sock: socket.socket, raw: bytes) -> Reply:
    """Send raw as it is and read one reply (after any 100 Continue)."""
    try:
        sock.sendall(raw)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # refused before it was all read: the reply is still there
    # A reply to HEAD has no content whatever its Content-Length says.
    method = "HEAD" if raw.startswith(b"HEAD ") else "GET"
    resp = http.client.HTTPResponse(sock, method=method)
    try:
        resp.begin()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        resp.close()


def assert_closed(sock: socket.socket) -> None:
    """The server closed the connection and sent nothing after its reply."""
    sock.settimeout(REPLY_TIMEOUT)
    try:
        extra = sock.recv(64 * 1024)
    except ConnectionResetError:
        return
    except TimeoutError:
        raise AssertionError("the server kept the connection open") from None
    assert extra == b"", f"the server sent more after its reply: {extra[:200]!r}"


def assert_usable(sock: socket.socket, scene: Scene) -> None:
    """The connection serves another request."""
    reply = exchange(sock, scene.fill(b"OPTIONS /images/{rw} HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert reply.status == 200, f"the next request got {reply.status}"
