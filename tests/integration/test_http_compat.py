"""HTTP details a client of ovirt-imageio can see, through a real daemon:
the open-ended Content-Range, 405 with Allow, a missing ticket id, what
OPTIONS reports, and NBD URLs in the standard form."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from tests.integration import rawhttp
from tests.support.daemon import terminate

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

KiB = 1024
MiB = 1024**2
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def request(
    conn: http.client.HTTPConnection,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, url, body=body, headers=headers or {}, **kw)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()


def options(daemon: Daemon, ticket_id: str) -> Any:
    conn = daemon.unix()
    try:
        status, _, body = request(conn, "OPTIONS", f"/images/{ticket_id}")
    finally:
        conn.close()
    assert status == 200, body
    return json.loads(body)


# PUT with an open-ended Content-Range, as ovirt-imageio takes it.


@pytest.mark.parametrize("complete", ["*", str(4 * MiB)])
def test_put_with_open_end_writes_the_body_at_its_start(daemon: Daemon, complete: str) -> None:
    ticket_id, path = daemon.add_ticket(size=4 * MiB)
    data = os.urandom(MiB + 4097)
    conn = daemon.https()
    try:
        status, _, body = request(
            conn,
            "PUT",
            f"/images/{ticket_id}",
            data,
            {"Content-Range": f"bytes 513-*/{complete}"},
        )
        assert status == 200, body
        assert daemon.status(ticket_id)["transferred"] == len(data)
        # The connection goes on.
        status, _, got = request(
            conn, "GET", f"/images/{ticket_id}", headers={"Range": f"bytes=0-{len(data) + 1023}"}
        )
    finally:
        conn.close()
    assert status == 206
    assert got == bytes(513) + data + bytes(1024 - 513)
    assert path.read_bytes()[513 : 513 + len(data)] == data


def test_chunked_put_with_open_end(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    pieces = [b"a" * 1000, b"b" * 3000, b"c" * 7]
    conn = daemon.unix()
    try:
        status, _, body = request(
            conn,
            "PUT",
            f"/images/{ticket_id}",
            iter(pieces),
            {"Transfer-Encoding": "chunked", "Content-Range": "bytes 100-*/*"},
            encode_chunked=True,
        )
    finally:
        conn.close()
    assert status == 200, body
    assert path.read_bytes()[100 : 100 + 4007] == b"".join(pieces)


@pytest.mark.parametrize(
    ("content_range", "length", "status"),
    [
        (f"bytes {MiB - 10}-*/*", 11, 416),  # past the ticket
        (f"bytes {MiB}-*/*", 1, 416),
        ("bytes 100-*/200", 101, 400),  # past its own complete length
        ("bytes 200-*/200", 1, 400),
        ("bytes *-*/*", 1, 400),
    ],
)
def test_put_with_open_end_past_the_image_is_refused(
    daemon: Daemon, content_range: str, length: int, status: int
) -> None:
    ticket_id, path = daemon.add_ticket(size=MiB)
    before = path.read_bytes()
    sock = daemon.raw_unix()
    try:
        resp, body = rawhttp.send(
            sock,
            "PUT",
            f"/images/{ticket_id}",
            {"Content-Range": content_range, "Content-Length": str(length)},
            b"x" * length,
        )
    finally:
        sock.close()
    assert resp.status == status, body
    assert b"Content-Range" in body or status == 416
    assert path.read_bytes() == before


# Methods and paths.


@pytest.mark.parametrize("method", ["DELETE", "POST", "BREW", "M-SEARCH", "HEAD"])
def test_unknown_method_is_405_with_allow(daemon: Daemon, method: str) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    try:
        resp, _ = rawhttp.send(sock, method, f"/images/{ticket_id}")
        assert resp.status == 405
        assert {m.strip() for m in resp.getheader("Allow", "").split(",")} == {
            "OPTIONS",
            "GET",
            "PUT",
            "PATCH",
        }
        # Refused before any ticket is looked at; the connection goes on.
        assert rawhttp.still_open(sock, ticket_id)
    finally:
        sock.close()


def test_head_is_405_without_content(daemon: Daemon) -> None:
    # RFC 9110 section 9.3.2: content after the head of a reply to HEAD
    # would be read as the next reply. Read the bytes themselves: a
    # buffered reader would swallow what follows the head.
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    try:
        sock.sendall(f"HEAD /images/{ticket_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed before the head ended"
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 405 ")
        assert b"\r\nAllow: " in head
        assert rest == b""
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(10)
        assert rawhttp.still_open(sock, ticket_id)
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("target", "allow"),
    [
        ("/images/*", {"OPTIONS"}),
        ("/images/{id}/extents", {"GET"}),
        ("/images/{id}/checksum", {"GET"}),
    ],
)
def test_405_names_what_the_resource_allows(daemon: Daemon, target: str, allow: set[str]) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    try:
        resp, _ = rawhttp.send(sock, "POST", target.format(id=ticket_id))
    finally:
        sock.close()
    assert resp.status == 405
    assert {m.strip() for m in resp.getheader("Allow", "").split(",")} == allow


def test_ticket_api_405_names_its_methods(daemon: Daemon) -> None:
    sock = rawhttp_unix(str(daemon.dir / "tickets.sock"))
    try:
        resp, _ = rawhttp.send(sock, "POST", f"/tickets/{uuidlib.uuid4()}")
    finally:
        sock.close()
    assert resp.status == 405
    allow = {m.strip() for m in resp.getheader("Allow", "").split(",")}
    assert allow == {"GET", "PUT", "PATCH", "DELETE"}


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/images/"),
        ("GET", "/images//"),
        ("OPTIONS", "/images/"),
        ("PATCH", "/images/"),
        ("GET", "/images//extents"),
        ("GET", "/images//extents?context=zero"),
        ("GET", "/images//checksum"),
    ],
)
def test_no_ticket_id_is_400(daemon: Daemon, method: str, target: str) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_unix()
    try:
        resp, body = rawhttp.send(sock, method, target)
        assert resp.status == 400
        assert b"ticket id is missing" in body
        assert rawhttp.still_open(sock, ticket_id)
    finally:
        sock.close()


def test_put_without_ticket_id_is_400(daemon: Daemon) -> None:
    conn = daemon.https()
    try:
        status, _, body = request(conn, "PUT", "/images/", b"x" * KiB)
    finally:
        conn.close()
    assert status == 400
    assert b"ticket id is missing" in body


# What OPTIONS reports.


@pytest.mark.parametrize(
    ("ops", "allowed"),
    [(["write"], ["read", "write"]), (["read", "write"], ["read", "write"]), (["read"], ["read"])],
)
def test_options_reports_size_and_what_the_ticket_allows(
    daemon: Daemon, ops: list[str], allowed: list[str]
) -> None:
    size = 3 * MiB + 512
    ticket_id, _ = daemon.add_ticket(size=size, ops=tuple(ops))
    body = options(daemon, ticket_id)
    assert body["size"] == size
    assert body["ops"] == allowed
    assert body["max_writers"] == (8 if "write" in allowed else 0)
    # The size is where the extents end, which clients summed before.
    conn = daemon.unix()
    try:
        _, _, got = request(conn, "GET", f"/images/{ticket_id}/extents")
    finally:
        conn.close()
    last = json.loads(got)[-1]
    assert last["start"] + last["length"] == body["size"]


@pytest.mark.parametrize(("shared", "writers"), [(0, 8), (4, 8), (1, 1)])
def test_nbd_max_writers_follows_multi_conn(daemon: Daemon, shared: int, writers: int) -> None:
    # qemu-nbd promises multi-conn consistency when it takes several clients;
    # with --shared=1 a flush on one connection need not cover another's writes.
    with qemu_nbd(daemon, shared=shared) as sock:
        ticket_id = add_url_ticket(daemon, f"nbd:unix:{sock}", ["write"])
        body = options(daemon, ticket_id)
        assert body["max_writers"] == writers
        assert body["max_readers"] == 8
        daemon.result("Ticket.remove", uuid=ticket_id)


# NBD URLs in the standard form (nbd+unix:///EXPORT?socket=PATH).


def test_standard_nbd_uri_serves_the_named_export(daemon: Daemon) -> None:
    with qemu_nbd(daemon, shared=0, export="disk one") as sock:
        url = f"nbd+unix:///{quote('disk one')}?socket={sock}"
        ticket_id = add_url_ticket(daemon, url, ["write"])
        assert daemon.status(ticket_id)["url"] == url
        data = os.urandom(MiB)
        conn = daemon.unix()
        try:
            status, _, _ = request(
                conn,
                "PUT",
                f"/images/{ticket_id}",
                data,
                {"Content-Range": f"bytes {MiB}-{2 * MiB - 1}/*"},
            )
            assert status == 200
            status, _, got = request(
                conn, "GET", f"/images/{ticket_id}", headers={"Range": f"bytes={MiB}-{2 * MiB - 1}"}
            )
        finally:
            conn.close()
        assert (status, got) == (206, data)
        daemon.result("Ticket.remove", uuid=ticket_id)


def test_standard_nbd_uri_with_a_wrong_export_fails_to_open(daemon: Daemon) -> None:
    with qemu_nbd(daemon, shared=0, export="right") as sock:
        ticket_id = add_url_ticket(daemon, f"nbd+unix:///wrong?socket={sock}", ["read"])
        conn = daemon.unix()
        try:
            status, _, _ = request(conn, "GET", f"/images/{ticket_id}")
        finally:
            conn.close()
        assert status == 500
        daemon.result("Ticket.remove", uuid=ticket_id)


def test_standard_nbd_uri_outside_url_roots_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    with qemu_nbd(daemon, shared=0, directory=tmp_path) as sock:
        for url in (
            f"nbd+unix:///?socket={sock}",
            f"nbd+unix:///?socket={daemon.dir}/..{quote(str(sock))}",
            f"nbd+unix:///?socket={daemon.dir}/%2e%2e{quote(str(sock))}",
        ):
            error = daemon.call("Ticket.add", ticket=url_ticket(url, ["read"]))["error"]
            assert error["code"] == -32602, url
            assert error["data"]["field"] == "url"
            assert "url_roots" in error["data"]["reason"]


@pytest.mark.parametrize(
    "url",
    [
        "nbd+unix:///x",
        "nbd+unix://localhost/x?socket=/s",
        "nbd+unix:///x?socket=/s&tls=require",
        "nbd+unix:///x?socket=relative.sock",
    ],
)
def test_malformed_standard_nbd_uri_is_refused(daemon: Daemon, url: str) -> None:
    error = daemon.call("Ticket.add", ticket=url_ticket(url, ["read"]))["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "url"


# Helpers.


def rawhttp_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def url_ticket(url: str, ops: list[str], size: int = 4 * MiB) -> dict[str, Any]:
    ticket_id = str(uuidlib.uuid4())
    return {
        "uuid": ticket_id,
        "size": size,
        "ops": ops,
        "timeout": 300,
        "url": url,
        "transfer_id": f"compat-{ticket_id[:8]}",
    }


def add_url_ticket(daemon: Daemon, url: str, ops: list[str]) -> str:
    ticket = url_ticket(url, ops)
    daemon.result("Ticket.add", ticket=ticket)
    return str(ticket["uuid"])


@contextlib.contextmanager
def qemu_nbd(
    daemon: Daemon, *, shared: int, export: str = "", directory: Path | None = None
) -> Iterator[Path]:
    """A qemu-nbd on a 4 MiB raw image, its socket under the daemon's
    directory (inside url_roots) unless told otherwise."""
    where = directory or daemon.dir
    name = uuidlib.uuid4().hex[:8]
    image = where / f"{name}.raw"
    with open(image, "wb") as f:
        f.truncate(4 * MiB)
    sock = where / f"{name}.sock"
    proc = subprocess.Popen(
        [
            "qemu-nbd",
            "--persistent",
            f"--shared={shared}",
            "--format=raw",
            f"--socket={sock}",
            f"--export-name={export}",
            "--cache=writeback",
            str(image),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "qemu-nbd did not start"
            time.sleep(0.02)
        yield sock
    finally:
        terminate(proc, STOP_TIMEOUT)
        if proc.stderr:
            proc.stderr.close()
        image.unlink(missing_ok=True)
