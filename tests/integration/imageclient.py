"""A client of one ticket's /images resource, and tickets on images anywhere.

Plain http.client on the daemon's TLS port or unix socket; a reply that is
not a success fails the caller's test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

TRANSPORTS = ("unix", "https")

_images = itertools.count()


def new_image(directory: Path, size: int) -> Path:
    # Named apart from any ticket id: the daemon logs paths, never the secret.
    path = directory / f"image-{next(_images)}.raw"
    with open(path, "wb") as f:
        # Data at the start: the alignment probe then finds the sector size.
        f.write(b"\xee" * 4096)
        f.truncate(size)
    return path


def ticket_for(path: Path, size: int) -> dict[str, Any]:
    """A sparse read-write ticket for path."""
    return {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "ops": ["read", "write"],
        "timeout": 300,
        "url": path.as_uri(),
        "transfer_id": f"test-{path.stem}",
        "sparse": True,
    }


@contextlib.contextmanager
def image_ticket(daemon: Daemon, directory: Path, size: int) -> Iterator[tuple[str, Path]]:
    """A new image in directory and a ticket for it, both gone at the end."""
    path = new_image(directory, size)
    ticket = ticket_for(path, size)
    daemon.result("Ticket.add", ticket=ticket)
    try:
        yield ticket["uuid"], path
    finally:
        daemon.result("Ticket.remove", uuid=ticket["uuid"])
        path.unlink()


class Client:
    """One connection to one ticket's image."""

    def __init__(self, daemon: Daemon, ticket_id: str, transport: str) -> None:
        self.daemon = daemon
        self.transport = transport
        self.conn = daemon.unix() if transport == "unix" else daemon.https()
        self.url = f"/images/{ticket_id}"

    def put(self, offset: int, data: bytes, *, flush: bool = False) -> None:
        self.conn.request(
            "PUT",
            f"{self.url}?flush={'y' if flush else 'n'}",
            body=data,
            headers={"Content-Range": _content_range(offset, len(data))},
        )
        self._ok()

    def put_chunked(self, offset: int, pieces: list[bytes], *, flush: bool = False) -> None:
        self.conn.request(
            "PUT",
            f"{self.url}?flush={'y' if flush else 'n'}",
            body=iter(pieces),
            encode_chunked=True,
            headers={
                "Transfer-Encoding": "chunked",
                "Content-Range": _content_range(offset, sum(map(len, pieces))),
            },
        )
        self._ok()

    def zero(self, offset: int, size: int, *, flush: bool = False) -> None:
        self._patch({"op": "zero", "offset": offset, "size": size, "flush": flush})

    def flush(self) -> None:
        self._patch({"op": "flush"})

    def get(self, offset: int, length: int) -> bytes:
        self.conn.request(
            "GET", self.url, headers={"Range": f"bytes={offset}-{offset + length - 1}"}
        )
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 206, body
        assert len(body) == length
        return body

    def extents(self, start: int | None = None, length: int | None = None) -> list[dict[str, Any]]:
        query = "context=zero"
        if start is not None and length is not None:
            query += f"&start={start}&length={length}"
        self.conn.request("GET", f"{self.url}/extents?{query}")
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return list(json.loads(body))

    def _patch(self, msg: dict[str, Any]) -> None:
        self.conn.request(
            "PATCH",
            self.url,
            body=json.dumps(msg),
            headers={"Content-Type": "application/json"},
        )
        self._ok()

    def _ok(self) -> None:
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body

    def close(self) -> None:
        self.conn.close()


def put_cut_off(daemon: Daemon, ticket_id: str, transport: str, offset: int, data: bytes) -> int:
    """Send a PUT of data whose body stops half-way, then end our side.

    Returns once the daemon closed the connection: it has stopped the
    request by then, so nothing of it is written later. Returns how many
    bytes of the body were sent.
    """
    sock: socket.socket = daemon.raw_unix() if transport == "unix" else daemon.raw_tls()
    sent = len(data) // 2
    head = (
        f"PUT /images/{ticket_id}?flush=n HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Length: {len(data)}\r\n"
        f"Content-Range: {_content_range(offset, len(data))}\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + data[:sent])
        # No TLS close_notify: the peer just stops, as one that crashed.
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
    finally:
        sock.close()
    return sent


def _content_range(offset: int, length: int) -> str:
    return f"bytes {offset}-{offset + length - 1}/*"


def well_formed(extents: Iterable[dict[str, Any]], start: int, end: int) -> str | None:
    """Why extents are not contiguous over [start, end), of positive lengths
    and merged; None when they are."""
    pos, kind = start, None
    for e in extents:
        if e["start"] != pos:
            return f"gap or overlap at {pos}: {e}"
        if e["length"] <= 0:
            return f"empty extent: {e}"
        if (e["zero"], e["hole"]) == kind:
            return f"not merged at {pos}: {e}"
        pos, kind = e["start"] + e["length"], (e["zero"], e["hole"])
    return None if pos == end else f"covers [{start}, {pos}) of [{start}, {end})"
