"""Tickets served through qemu-nbd: a real daemon, real qemu-nbd, HTTP clients."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
import shutil
import subprocess
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from storage.qemu_nbd import QemuNbd

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

MiB = 1024**2
KiB = 1024
SIZE = 8 * MiB
CLUSTER = 64 * KiB
CMD_TIMEOUT = 60


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=CMD_TIMEOUT)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def guest_data(image: Path, fmt: str) -> bytes:
    """The image's guest view, read by qemu-img while qemu-nbd holds it."""
    if fmt == "raw":
        return image.read_bytes()
    with tempfile.NamedTemporaryFile(dir=image.parent) as out:
        run("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(image), out.name)
        return Path(out.name).read_bytes()


def request(
    conn: http.client.HTTPConnection,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn.request(method, url, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def put(conn: http.client.HTTPConnection, ticket_id: str, offset: int, data: bytes) -> None:
    status, body = request(
        conn,
        "PUT",
        f"/images/{ticket_id}",
        data,
        {
            "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/*",
            "Content-Length": str(len(data)),
        },
    )
    assert status == 200, body


def extents(daemon: Daemon, ticket_id: str, query: str = "") -> Any:
    conn = daemon.https()
    status, body = request(conn, "GET", f"/images/{ticket_id}/extents{query}")
    conn.close()
    assert status == 200, body
    return json.loads(body)


def zero_extent(start: int, end: int, *, zero: bool, hole: bool) -> dict[str, Any]:
    return {"start": start, "length": end - start, "zero": zero, "hole": hole}


class Volumes:
    """Images next to the daemon's, each served by its own qemu-nbd."""

    def __init__(self, daemon: Daemon, stack: contextlib.ExitStack) -> None:
        self.daemon = daemon
        self._stack = stack
        # Under the daemon's directory: --local confines tickets to it.
        self.sockets = tempfile.mkdtemp(prefix="nbd-", dir=daemon.dir)
        stack.callback(shutil.rmtree, self.sockets)

    def image(self, fmt: str, *, bitmap: str | None = None) -> Path:
        path = self.daemon.dir / f"{uuidlib.uuid4().hex}.{fmt}"
        run("qemu-img", "create", "-q", "-f", fmt, str(path), str(SIZE))
        if bitmap:
            run("qemu-img", "bitmap", "--add", str(path), bitmap)
        return path

    def serve(self, image: Path, fmt: str, **kw: Any) -> QemuNbd:
        sock = f"{self.sockets}/{uuidlib.uuid4().hex[:8]}.sock"
        return self._stack.enter_context(QemuNbd(str(image), fmt, sock, **kw))

    def ticket(self, url: str, *, ops: tuple[str, ...] = ("read", "write"), **extra: Any) -> str:
        ticket_id = str(uuidlib.uuid4())
        ticket = {
            "uuid": ticket_id,
            "size": SIZE,
            "ops": list(ops),
            "timeout": 300,
            "url": url,
            "transfer_id": f"nbd-{ticket_id[:8]}",
            "sparse": True,
        }
        ticket.update(extra)
        self.daemon.result("Ticket.add", ticket=ticket)
        self._stack.callback(self.daemon.result, "Ticket.remove", uuid=ticket_id)
        return ticket_id


@pytest.fixture
def volumes(daemon: Daemon) -> Iterator[Volumes]:
    with contextlib.ExitStack() as stack:
        yield Volumes(daemon, stack)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_upload_then_download_keeps_checksum(daemon: Daemon, volumes: Volumes, fmt: str) -> None:
    image = volumes.image(fmt)
    server = volumes.serve(image, fmt)
    ticket_id = volumes.ticket(server.url)
    rng = random.Random(4)
    data = rng.randbytes(3 * MiB) + bytes(2 * MiB) + rng.randbytes(3 * MiB - 4097)
    conn = daemon.unix()
    status, body = request(
        conn, "PUT", f"/images/{ticket_id}", data, {"Content-Length": str(len(data))}
    )
    assert status == 200, body

    status, got = request(conn, "GET", f"/images/{ticket_id}")
    assert status == 200
    assert sha256(got[: len(data)]) == sha256(data)
    assert got[len(data) :] == bytes(SIZE - len(data))
    conn.close()
    assert sha256(guest_data(image, fmt)) == sha256(got)


def test_ranged_download_through_nbd(daemon: Daemon, volumes: Volumes) -> None:
    image = volumes.image("raw")
    data = random.Random(5).randbytes(SIZE)
    image.write_bytes(data)
    ticket_id = volumes.ticket(volumes.serve(image, "raw", read_only=True).url, ops=("read",))
    conn = daemon.https()
    conn.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=1000-2000999"})
    resp = conn.getresponse()
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes 1000-2000999/{SIZE}"
    assert resp.read() == data[1000:2001000]
    conn.close()


def test_parallel_downloads_use_their_own_nbd_connections(daemon: Daemon, volumes: Volumes) -> None:
    image = volumes.image("raw")
    data = random.Random(6).randbytes(SIZE)
    image.write_bytes(data)
    ticket_id = volumes.ticket(volumes.serve(image, "raw").url)
    results: dict[int, str] = {}

    def download(n: int) -> None:
        conn = daemon.https()
        start, end = n * SIZE // 2, (n + 1) * SIZE // 2 - 1
        conn.request("GET", f"/images/{ticket_id}", headers={"Range": f"bytes={start}-{end}"})
        results[n] = sha256(conn.getresponse().read())
        conn.close()

    threads = [threading.Thread(target=download, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: sha256(data[: SIZE // 2]), 1: sha256(data[SIZE // 2 :])}


@pytest.mark.parametrize(
    "fmt, zeroed",
    [
        ("raw", {"zero": True, "hole": True}),
        # qemu keeps a zeroed qcow2 range as allocated zero clusters.
        ("qcow2", {"zero": True, "hole": False}),
    ],
)
def test_extents_over_http(
    daemon: Daemon, volumes: Volumes, fmt: str, zeroed: dict[str, bool]
) -> None:
    image = volumes.image(fmt)
    ticket_id = volumes.ticket(volumes.serve(image, fmt).url)
    conn = daemon.https()
    put(conn, ticket_id, 0, b"\x01" * MiB)
    put(conn, ticket_id, 4 * MiB, b"\x02" * MiB)
    status, body = request(
        conn,
        "PATCH",
        f"/images/{ticket_id}",
        json.dumps({"op": "zero", "offset": 6 * MiB, "size": MiB}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200, body
    conn.close()

    def hole(start: int, end: int) -> dict[str, Any]:
        return zero_extent(start, end, zero=True, hole=True)

    def data(start: int, end: int) -> dict[str, Any]:
        return zero_extent(start, end, zero=False, hole=False)

    expected = [
        data(0, MiB),
        hole(MiB, 4 * MiB),
        data(4 * MiB, 5 * MiB),
        hole(5 * MiB, 6 * MiB),
        {"start": 6 * MiB, "length": MiB, **zeroed},
        hole(7 * MiB, SIZE),
    ]
    if zeroed["hole"]:
        expected[3:] = [hole(5 * MiB, SIZE)]
    assert extents(daemon, ticket_id, "?context=zero") == expected
    assert extents(daemon, ticket_id, f"?start={MiB // 2}&length={MiB}") == [
        data(MiB // 2, MiB),
        hole(MiB, MiB + MiB // 2),
    ]


def test_dirty_extents_of_a_dirty_ticket(daemon: Daemon, volumes: Volumes) -> None:
    image = volumes.image("qcow2", bitmap="checkpoint-1")
    run("qemu-io", "-f", "qcow2", "-c", f"write -P 3 {MiB} {2 * CLUSTER}", str(image))
    server = volumes.serve(image, "qcow2", read_only=True, bitmap="checkpoint-1")
    ticket_id = volumes.ticket(server.url, ops=("read",), dirty=True)
    assert extents(daemon, ticket_id, "?context=dirty") == [
        {"start": 0, "length": MiB, "dirty": False, "zero": True},
        {"start": MiB, "length": 2 * CLUSTER, "dirty": True, "zero": False},
        {
            "start": MiB + 2 * CLUSTER,
            "length": SIZE - MiB - 2 * CLUSTER,
            "dirty": False,
            "zero": True,
        },
    ]
    # The same export for a ticket that is not dirty.
    plain = volumes.ticket(server.url, ops=("read",))
    conn = daemon.https()
    status, _ = request(conn, "GET", f"/images/{plain}/extents?context=dirty")
    conn.close()
    assert status == 404


def test_write_ticket_on_read_only_export_is_403(daemon: Daemon, volumes: Volumes) -> None:
    image = volumes.image("raw")
    ticket_id = volumes.ticket(volumes.serve(image, "raw", read_only=True).url)
    conn = daemon.https()
    status, body = request(
        conn, "PUT", f"/images/{ticket_id}", b"x" * 4096, {"Content-Length": "4096"}
    )
    conn.close()
    assert status == 403, body
    assert b"read-only" in body
    assert image.read_bytes() == bytes(SIZE)


def test_ticket_for_a_missing_socket_is_invalid(daemon: Daemon, volumes: Volumes) -> None:
    reply = daemon.call(
        "Ticket.add",
        ticket={
            "uuid": str(uuidlib.uuid4()),
            "size": SIZE,
            "ops": ["read"],
            "timeout": 300,
            "url": f"nbd:unix:{volumes.sockets}/missing.sock",
        },
    )
    assert reply["error"]["code"] == -32602
    assert "url" in json.dumps(reply["error"])


def test_stopped_server_fails_requests_not_the_daemon(daemon: Daemon, volumes: Volumes) -> None:
    image = volumes.image("raw")
    server = volumes.serve(image, "raw")
    ticket_id = volumes.ticket(server.url)
    conn = daemon.https()
    assert request(conn, "GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-4095"})[0] == 206
    server.stop()
    status, _ = request(
        daemon.https(), "GET", f"/images/{ticket_id}", headers={"Range": "bytes=0-4095"}
    )
    conn.close()
    assert status == 500
    assert daemon.result("Service.info")["tickets"] >= 1


@pytest.mark.parametrize("parallel_reads, connections", [(1, 1), (2, 2), (3, 3)])
def test_download_reads_with_parallel_nbd_connections(
    make_daemon: MakeDaemon, parallel_reads: int, connections: int
) -> None:
    # Small buffers, so an 8 MiB download is many segments dealt to the lanes.
    daemon = make_daemon(http={"buffer_size": 64 * KiB, "parallel_reads": parallel_reads})
    with contextlib.ExitStack() as stack:
        volumes = Volumes(daemon, stack)
        image = volumes.image("raw")
        data = random.Random(9).randbytes(SIZE)
        image.write_bytes(data)
        server = volumes.serve(image, "raw", read_only=True)
        ticket_id = volumes.ticket(server.url, ops=("read",))
        for conn in (daemon.unix(), daemon.https()):
            status, got = request(conn, "GET", f"/images/{ticket_id}")
            assert status == 200
            assert sha256(got) == sha256(data)
            status, got = request(
                conn, "GET", f"/images/{ticket_id}", None, {"Range": f"bytes={MiB + 7}-{SIZE - 3}"}
            )
            assert status == 206 and got == data[MiB + 7 : SIZE - 2]
            conn.close()
        opened = [
            line for line in daemon.log().splitlines() if f"OPEN url={server.url} mode=r" in line
        ]
        # Over unix only the backend: its downloads are spliced through NBD
        # connections of the daemon's own (nbdwire). Over TLS the backend
        # and parallel_reads - 1 libnbd readers.
        assert len(opened) == 1 + connections, opened


@pytest.mark.parametrize("nbd_splice, opened_over_unix", [(True, 1), (False, 2)])
def test_nbd_splice_switch_chooses_the_unix_download_reader(
    make_daemon: MakeDaemon, nbd_splice: bool, opened_over_unix: int
) -> None:
    # The bench measures nbdwire against libnbd alone with this switch: off,
    # a unix download reads through libnbd (the backend and parallel_reads - 1
    # readers, each logged as OPEN) instead of NBD connections of our own.
    # Small buffers, so the download is long enough for the reader lanes.
    daemon = make_daemon(
        http={"buffer_size": 64 * KiB, "parallel_reads": 2, "nbd_splice": nbd_splice}
    )
    with contextlib.ExitStack() as stack:
        volumes = Volumes(daemon, stack)
        image = volumes.image("raw")
        data = random.Random(12).randbytes(SIZE)
        image.write_bytes(data)
        server = volumes.serve(image, "raw", read_only=True)
        ticket_id = volumes.ticket(server.url, ops=("read",))
        conn = daemon.unix()
        status, got = request(conn, "GET", f"/images/{ticket_id}")
        conn.close()
        assert status == 200
        assert sha256(got) == sha256(data)
        opened = [
            line for line in daemon.log().splitlines() if f"OPEN url={server.url} mode=r" in line
        ]
        assert len(opened) == opened_over_unix, opened
