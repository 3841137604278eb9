"""GET /images/<ticket>/checksum against a real daemon: file and qcow2
(through qemu-nbd) images, validation, features, progress and cancel.

The expected digests are computed here with hashlib from the image bytes
by the block rule; tests/compat/test_checksum_compat.py compares with
ovirt-imageio 2.5.1 itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
import subprocess
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from storage.qemu_nbd import QemuNbd
from vdsm_imageio.checksum import HashObject

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
MiB = 1024**2
GiB = 1024**3
# Holes, data that starts and ends off page and block boundaries, a run
# longer than a block, and an unaligned size.
SIZE = 21 * MiB + 4097
RUNS = [
    (0, 4096),
    (MiB + 512, 3 * MiB - 1000),
    (6 * MiB - 7, 9 * MiB + 14),
    (18 * MiB, 4096),
    (SIZE - 5000, 5000),
]
CMD_TIMEOUT = 60


def block_checksum(data: bytes, block_size: int = 4 * MiB, algorithm: str = "blake2b") -> str:
    """The rule: each block hashed alone, then the digests in order, over
    the image as qemu sees it (whole sectors)."""
    data += bytes(-len(data) % 512)

    def new() -> HashObject:
        if algorithm == "blake2b":
            return hashlib.blake2b(digest_size=32)
        if algorithm == "blake2s":
            return hashlib.blake2s(digest_size=32)
        return hashlib.new(algorithm)

    root = new()
    for pos in range(0, len(data), block_size):
        h = new()
        h.update(data[pos : pos + block_size])
        root.update(h.digest())
    return str(root.hexdigest())


def write_image(path: Path, size: int = SIZE, runs: list[tuple[int, int]] = RUNS) -> bytes:
    rnd = random.Random(7)
    with path.open("wb") as f:
        f.truncate(size)
        for start, length in runs:
            f.seek(start)
            f.write(rnd.randbytes(length))
    return path.read_bytes()


def add_ticket(daemon: Daemon, url: str, size: int, ops: tuple[str, ...] = ("read",)) -> str:
    ticket_id = str(uuidlib.uuid4())
    daemon.result(
        "Ticket.add",
        ticket={
            "uuid": ticket_id,
            "size": size,
            "ops": list(ops),
            "timeout": 300,
            "url": url,
            "transfer_id": f"sum-{ticket_id[:8]}",
        },
    )
    return ticket_id


def get(conn: http.client.HTTPConnection, target: str) -> tuple[int, Any]:
    conn.request("GET", target)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status == 200:
        return resp.status, json.loads(body)
    return resp.status, body.decode()


@pytest.fixture
def image(daemon: Daemon) -> tuple[str, bytes]:
    path = daemon.images / f"{uuidlib.uuid4()}.raw"
    data = write_image(path)
    ticket_id = add_ticket(daemon, path.as_uri(), SIZE)
    return ticket_id, data


@pytest.mark.parametrize("transport", ["https", "unix"])
def test_default_checksum_is_blake2b_4_mib_blocks(
    daemon: Daemon, image: tuple[str, bytes], transport: str
) -> None:
    ticket_id, data = image
    conn = daemon.https() if transport == "https" else daemon.unix()
    status, body = get(conn, f"/images/{ticket_id}/checksum")
    conn.close()
    assert status == 200, body
    assert body == {
        "algorithm": "blake2b",
        "block_size": 4 * MiB,
        "checksum": block_checksum(data),
    }


@pytest.mark.parametrize(
    "algorithm, block_size",
    [
        ("blake2b", MiB),
        ("blake2s", 4 * MiB),
        ("sha1", 16 * MiB),
        ("sha256", MiB + 4096),
        ("md5", 2 * MiB),
        ("sha512", 8 * MiB),
        ("sha3_256", 3 * MiB),
    ],
)
def test_checksum_of_file_with_holes_equals_block_rule(
    daemon: Daemon, image: tuple[str, bytes], algorithm: str, block_size: int
) -> None:
    ticket_id, data = image
    conn = daemon.unix()
    status, body = get(
        conn, f"/images/{ticket_id}/checksum?algorithm={algorithm}&block_size={block_size}"
    )
    conn.close()
    assert status == 200, body
    assert body == {
        "algorithm": algorithm,
        "block_size": block_size,
        "checksum": block_checksum(data, block_size, algorithm),
    }


def test_checksum_covers_the_image_as_get_serves_it(daemon: Daemon) -> None:
    # A ticket smaller than its file: the bytes a download returns.
    path = daemon.images / f"{uuidlib.uuid4()}.raw"
    data = write_image(path)
    ticket_id = add_ticket(daemon, path.as_uri(), 5 * MiB + 3)
    conn = daemon.unix()
    status, body = get(conn, f"/images/{ticket_id}/checksum")
    conn.close()
    assert status == 200, body
    assert body["checksum"] == block_checksum(data[: 5 * MiB + 3])


def test_checksum_of_empty_image(daemon: Daemon) -> None:
    path = daemon.images / f"{uuidlib.uuid4()}.raw"
    path.touch()
    ticket_id = add_ticket(daemon, path.as_uri(), 0)
    conn = daemon.unix()
    status, body = get(conn, f"/images/{ticket_id}/checksum")
    conn.close()
    assert status == 200, body
    assert body["checksum"] == block_checksum(b"")


def test_checksum_counts_as_progress(daemon: Daemon, image: tuple[str, bytes]) -> None:
    ticket_id, _ = image
    conn = daemon.unix()
    status, _ = get(conn, f"/images/{ticket_id}/checksum")
    conn.close()
    assert status == 200
    st = daemon.status(ticket_id)
    assert st["transferred"] == SIZE
    assert st["active"] is False


def test_write_ticket_can_checksum(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=2 * MiB, data=b"abc" * 1000)
    conn = daemon.unix()
    status, body = get(conn, f"/images/{ticket_id}/checksum")
    conn.close()
    assert status == 200, body
    assert body["checksum"] == block_checksum(path.read_bytes())


def test_algorithms_need_no_ticket(daemon: Daemon) -> None:
    conn = daemon.https()
    status, body = get(conn, f"/images/{uuidlib.uuid4()}/checksum/algorithms")
    conn.close()
    assert status == 200, body
    names = body["algorithms"]
    assert names == sorted(names)
    assert {"blake2b", "blake2s", "md5", "sha1", "sha256", "sha512"} <= set(names)
    assert not [n for n in names if n.startswith("shake")]


@pytest.mark.parametrize(
    "query, field",
    [
        ("block_size=4095", "block_size"),
        ("block_size=0", "block_size"),
        (f"block_size={MiB - 4096}", "block_size"),
        (f"block_size={16 * MiB + 4096}", "block_size"),
        (f"block_size={2 * MiB + 512}", "block_size"),
        ("block_size=abc", "block_size"),
        ("block_size=", "block_size"),
        ("algorithm=shake_128", "algorithm"),
        ("algorithm=nope", "algorithm"),
        ("algorithm=SHA256", "algorithm"),
    ],
)
def test_bad_query_is_400_naming_the_parameter(
    daemon: Daemon, image: tuple[str, bytes], query: str, field: str
) -> None:
    ticket_id, _ = image
    conn = daemon.unix()
    status, body = get(conn, f"/images/{ticket_id}/checksum?{query}")
    conn.close()
    assert status == 400
    assert field in body


def test_checksum_needs_a_live_ticket(daemon: Daemon) -> None:
    conn = daemon.unix()
    status, _ = get(conn, f"/images/{uuidlib.uuid4()}/checksum")
    conn.close()
    assert status == 403


def test_checksum_is_a_feature(daemon: Daemon) -> None:
    read_id, _ = daemon.add_ticket(size=MiB, ops=("read",))
    write_id, _ = daemon.add_ticket(size=MiB)
    for target in (f"/images/{read_id}", f"/images/{write_id}", "/images/*"):
        conn = daemon.https()
        conn.request("OPTIONS", target)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert "checksum" in body["features"], target
    assert "checksum" in daemon.result("Service.info")["features"]


# qcow2 guest data through qemu-nbd.


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=CMD_TIMEOUT)


@pytest.mark.parametrize("algorithm, block_size", [("blake2b", 4 * MiB), ("sha256", MiB)])
def test_checksum_of_qcow2_guest_data(daemon: Daemon, algorithm: str, block_size: int) -> None:
    raw = daemon.dir / f"{uuidlib.uuid4().hex}.raw"
    data = write_image(raw)
    qcow2 = raw.with_suffix(".qcow2")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    # Allocated zero clusters too, which block status reports as zero, not hole.
    run("qemu-io", "-f", "qcow2", "-c", f"write -z {10 * MiB} {MiB}", str(qcow2))
    data = data[: 10 * MiB] + bytes(MiB) + data[11 * MiB :]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            QemuNbd(str(qcow2), "qcow2", f"{daemon.dir}/{qcow2.stem[:8]}.sock", read_only=True)
        )
        ticket_id = add_ticket(daemon, server.url, SIZE)
        stack.callback(daemon.result, "Ticket.remove", uuid=ticket_id)
        conn = daemon.unix()
        status, body = get(
            conn, f"/images/{ticket_id}/checksum?algorithm={algorithm}&block_size={block_size}"
        )
        conn.close()
    assert status == 200, body
    assert body["checksum"] == block_checksum(data, block_size, algorithm)


# Cancel.


class ThrottledNbd(QemuNbd):
    """qemu-nbd reading its raw image at a fixed rate (qemu's throttle
    filter): a checksum that takes seconds without a huge image."""

    RATE = 4 * MiB

    def command(self, *, direct: bool) -> list[str]:
        opts = (
            "driver=throttle,throttle-group=slow,file.driver=raw,"
            f"file.file.driver=file,file.file.filename={self.image}"
        )
        return [
            "qemu-nbd",
            "--persistent",
            "--shared=0",
            f"--socket={self.socket_path}",
            "--read-only",
            "--object",
            f"throttle-group,id=slow,x-bps-read={self.RATE}",
            "--image-opts",
            opts,
        ]


def test_remove_cancels_running_checksum(make_daemon: MakeDaemon) -> None:
    # Small buffers: a cancel is seen between two reads of the slow storage.
    daemon = make_daemon(http={"buffer_size": 256 * KiB})
    size = 32 * MiB  # 8 s at the throttled rate
    path = daemon.dir / "slow.raw"
    path.write_bytes(b"\x01" * size)  # data everywhere: nothing to skip
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            ThrottledNbd(str(path), "raw", f"{daemon.dir}/slow.sock", read_only=True)
        )
        ticket_id = add_ticket(daemon, server.url, size)
        conn = daemon.unix(timeout=60)
        stack.callback(conn.close)
        outcome: dict[str, Any] = {}

        def checksum() -> None:
            try:
                outcome["reply"] = get(conn, f"/images/{ticket_id}/checksum?block_size={MiB}")
            except (OSError, http.client.HTTPException) as e:
                outcome["error"] = e

        thread = threading.Thread(target=checksum)
        thread.start()
        stack.callback(thread.join, 30)
        deadline = time.monotonic() + 30
        while daemon.status(ticket_id)["transferred"] < MiB:
            assert thread.is_alive(), f"checksum ended before the remove: {outcome}"
            assert time.monotonic() < deadline, "the checksum made no progress"
            time.sleep(0.02)
        started = time.monotonic()
        # Returns once the request has ended (TicketBusy if it does not).
        assert daemon.result("Ticket.remove", uuid=ticket_id) is True
        elapsed = time.monotonic() - started
        thread.join(30)
        assert not thread.is_alive(), "the client did not see the end"
    # The rest of the image would take seconds more.
    assert elapsed < 4
    assert "error" in outcome or outcome["reply"][0] == 403, outcome
    # The log names the transfer, never the ticket id (the secret).
    log = daemon.log()
    assert f"CHECKSUM transfer=sum-{ticket_id[:8]}" in log
    assert ticket_id not in log
