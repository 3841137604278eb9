"""``--verify``: the server's ``/checksum`` against the local guest data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tests.integration.clientrun import (
    MiB,
    qcow2_with_runs,
    run_client,
    start_client,
    stop,
    wait_for,
    write_runs,
)
from tests.integration.relay import Relay
from vdsm_imageio.client import errors
from vdsm_imageio.client.journal import parse

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

SIZE = 64 * MiB
CORRUPT_AT = 4096 + 17


def url(port: int, ticket_id: str) -> str:
    return f"https://127.0.0.1:{port}/images/{ticket_id}"


def journaled(state: Path, offset: int) -> bool:
    """True once the upload's journal says offset is stored on the server."""
    for path in state.glob("*.journal"):
        try:
            _, done = parse(path.read_text())
        except ValueError:
            return False
        return any(start <= offset < end for start, end in done)
    return False


def test_upload_verifies_by_default_and_prints_the_checksum(daemon: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "src.qcow2"
    qcow2_with_runs(src, SIZE, [(0, MiB), (30 * MiB, 5 * MiB + 512)])
    ticket_id, _ = daemon.add_ticket(size=SIZE, data=b"\x55" * SIZE)
    done = run_client(
        "upload", src, url(daemon.port, ticket_id), "--cafile", daemon.ca, "--state-dir", tmp_path
    )
    assert done.returncode == 0, done.stderr
    local = json.loads(run_client("checksum", src).stdout)["checksum"]
    assert f"verified blake2b {local}" in done.stderr
    assert f"CHECKSUM transfer=t-{ticket_id[:8]}" in daemon.log()
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_a_byte_corrupted_on_the_server_fails_verification(daemon: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    write_runs(src, SIZE, [(0, SIZE)], seed=31)
    ticket_id, disk = daemon.add_ticket(size=SIZE)
    state = tmp_path / "state"
    # Slow enough that checkpoints (about two a second) journal the first
    # ranges before the relay holds the upload half-way.
    with Relay(daemon.port, rate=8 * MiB, hold_up_after=SIZE // 2) as relay:
        proc = start_client(
            "upload",
            src,
            url(relay.port, ticket_id),
            "--no-unix-socket",
            "--cafile",
            daemon.ca,
            "--state-dir",
            state,
            "-q",
        )
        try:
            wait_for(lambda: relay.held.is_set() or proc.poll() is not None, 60, "hold")
            # Stored and flushed: the client will not write there again.
            wait_for(lambda: journaled(state, CORRUPT_AT), 30, "a journaled first range")
            fd = os.open(disk, os.O_RDWR)
            try:
                good = os.pread(fd, 1, CORRUPT_AT)
                os.pwrite(fd, bytes([good[0] ^ 0xFF]), CORRUPT_AT)
                os.fsync(fd)
            finally:
                os.close(fd)
            relay.release()
            proc.wait(120)
        finally:
            _, err = stop(proc)
    assert proc.returncode == errors.MISMATCH, err
    line = err.strip()
    assert len(line.splitlines()) == 1, err
    assert "verification failed" in line and "blake2b" in line, line
    digests = re.findall(r"local=([0-9a-f]{64}) server=([0-9a-f]{64})", line)
    assert digests and digests[0][0] != digests[0][1], line
    local = json.loads(run_client("checksum", src).stdout)["checksum"]
    assert digests[0][0] == local
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_no_verify_skips_the_checksum(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, [(0, MiB)], seed=32)
    target = tmp_path / "out.raw"
    done = run_client(
        "download", url(daemon.port, ticket_id), target, "--cafile", daemon.ca, "--no-verify", "-v"
    )
    assert done.returncode == 0, done.stderr
    assert f"CHECKSUM transfer=t-{ticket_id[:8]}" not in daemon.log()
    assert "verified" not in done.stderr
    daemon.result("Ticket.remove", uuid=ticket_id)
