"""The HTTP ticket API as vdsm drives it, and the image requests the ticket
tests make: one ``http.client`` connection per request over a unix socket."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

KiB = 1024
MiB = 1024**2


class Reply:
    def __init__(self, res: http.client.HTTPResponse, body: bytes) -> None:
        self.status = res.status
        self.reason = res.reason
        self.headers = res.headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def vdsm_request(
    daemon: Daemon, method: str, ticket_id: str, body: Any = None, raw: bytes | None = None
) -> Reply:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode("utf8"))
    con = daemon.tickets()
    with contextlib.closing(con):
        con.request(method, f"/tickets/{ticket_id}", body=data)
        res = con.getresponse()
        return Reply(res, res.read())


def tickets_path(daemon: Daemon) -> str:
    return str(daemon.dir / "tickets.sock")


def engine_ticket(daemon: Daemon, size: int = MiB, **extra: Any) -> dict[str, Any]:
    """The ticket the engine sends through vdsm, for a new image file."""
    ticket_id = str(uuidlib.uuid4())
    # Not named after the uuid: tests look for the secret in the log.
    path = daemon.images / f"disk-{uuidlib.uuid4()}.raw"
    path.write_bytes(b"")
    os.truncate(path, size)
    ticket = {
        "uuid": ticket_id,
        "timeout": 300,
        "inactivity_timeout": 60,
        "size": size,
        "url": path.as_uri(),
        "ops": ["write"],
        "sparse": True,
        "transfer_id": str(uuidlib.uuid4()),
        "dirty": False,
    }
    ticket.update(extra)
    return ticket


def image_of(ticket: dict[str, Any]) -> Path:
    return Path(ticket["url"].removeprefix("file://"))


def upload_status(daemon: Daemon, ticket_id: str, data: bytes) -> int:
    con = daemon.unix()
    try:
        con.request("PUT", f"/images/{ticket_id}", body=data)
        res = con.getresponse()
        res.read()
        return res.status
    finally:
        con.close()


def upload(daemon: Daemon, ticket_id: str, data: bytes) -> None:
    assert upload_status(daemon, ticket_id, data) == 200


def download(daemon: Daemon, ticket_id: str, start: int, length: int) -> bytes:
    con = daemon.unix()
    try:
        con.request(
            "GET", f"/images/{ticket_id}", headers={"Range": f"bytes={start}-{start + length - 1}"}
        )
        res = con.getresponse()
        body = res.read()
        assert res.status == 206
        return body
    finally:
        con.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
