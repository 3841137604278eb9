"""Interrupted transfers continue with ``--resume`` and send little again.

The client talks to the daemon through a relay (tests/integration/relay.py)
that counts every byte of both runs and holds the transfer half-way, so the
client is killed in the middle of the image however fast the machine is.
The ticket's ``transferred`` cannot count this: it is a union of ranges.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from tests.integration.clientrun import (
    MiB,
    run,
    run_client,
    same_guest_data,
    start_client,
    stop,
    wait_for,
    write_runs,
)
from tests.integration.relay import Relay
from tests.support.procs import running

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

SIZE = 256 * MiB
# Fast enough for a short test, slow enough that the client's one-second
# checkpoints commit part of the image before the hold.
RATE = 64 * MiB
HOLD_TIMEOUT = 60.0


def url(port: int, ticket_id: str) -> str:
    return f"https://127.0.0.1:{port}/images/{ticket_id}"


def qemu_nbd_serving(path: Path) -> list[int]:
    """Pids of qemu-nbd processes whose command line names path."""
    return [pid for pid, argv in running(b"qemu-nbd") if os.fsencode(path) in argv]


def test_upload_killed_half_way_resumes_sending_less_than_half_again(
    daemon: Daemon, tmp_path: Path
) -> None:
    src = tmp_path / "src.raw"
    write_runs(src, SIZE, [(0, SIZE)], seed=11)
    ticket_id, disk = daemon.add_ticket(size=SIZE)
    state = tmp_path / "state"
    args: list[str | Path] = [
        src,
        "--no-unix-socket",
        "--cafile",
        daemon.ca,
        "--state-dir",
        state,
        "-q",
    ]
    with Relay(daemon.port, rate=RATE, hold_up_after=SIZE // 2) as relay:
        proc = start_client("upload", args[0], url(relay.port, ticket_id), *args[1:])
        try:
            wait_for(lambda: relay.held.is_set() or proc.poll() is not None, HOLD_TIMEOUT, "hold")
        finally:
            stop(proc, signal.SIGKILL)
        assert relay.held.is_set(), "the client ended before half of the image"
        journals = list(state.glob("*.journal"))
        assert len(journals) == 1, journals
        relay.release()
        first = relay.up

        done = run_client("upload", args[0], url(relay.port, ticket_id), *args[1:], "--resume")
        assert done.returncode == 0, done.stderr
        total = relay.up
    assert same_guest_data(src, disk)
    assert not journals[0].exists(), "a complete upload leaves no journal"
    assert first >= SIZE // 2
    print(f"first run {first / MiB:.0f} MiB, both {total / MiB:.0f} MiB")
    assert total < 1.5 * SIZE, f"sent {total / MiB:.0f} MiB for a {SIZE // MiB} MiB image"
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_download_killed_half_way_resumes_receiving_less_than_half_again(
    daemon: Daemon, tmp_path: Path
) -> None:
    ticket_id, image = daemon.add_ticket(size=SIZE, ops=("read",))
    write_runs(image, SIZE, [(0, SIZE)], seed=12)
    target = tmp_path / "out.raw"
    args: list[str | Path] = ["--no-unix-socket", "--cafile", daemon.ca, "-q"]
    with Relay(daemon.port, rate=RATE, hold_down_after=SIZE // 2) as relay:
        proc = start_client("download", url(relay.port, ticket_id), target, *args)
        try:
            wait_for(lambda: relay.held.is_set() or proc.poll() is not None, HOLD_TIMEOUT, "hold")
        finally:
            stop(proc, signal.SIGKILL)
        assert relay.held.is_set(), "the client ended before half of the image"
        assert Path(f"{target}.journal").exists()
        relay.release()

        done = run_client("download", url(relay.port, ticket_id), target, *args, "--resume")
        assert done.returncode == 0, done.stderr
        total = relay.down
    assert target.read_bytes() == image.read_bytes()
    assert not Path(f"{target}.journal").exists()
    print(f"both runs {total / MiB:.0f} MiB")
    assert total < 1.5 * SIZE, f"received {total / MiB:.0f} MiB for a {SIZE // MiB} MiB image"
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_ctrl_c_stops_qemu_nbd_keeps_the_journal_and_exits_130(
    daemon: Daemon, tmp_path: Path
) -> None:
    raw = tmp_path / "src.raw"
    write_runs(raw, SIZE // 2, [(0, SIZE // 2)], seed=13)
    src = tmp_path / "src.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src)
    ticket_id, disk = daemon.add_ticket(size=SIZE // 2)
    state = tmp_path / "state"
    args: list[str | Path] = ["--no-unix-socket", "--cafile", daemon.ca, "--state-dir", state]
    with Relay(daemon.port, rate=RATE, hold_up_after=SIZE // 4) as relay:
        proc = start_client("upload", src, url(relay.port, ticket_id), *args)
        try:
            wait_for(lambda: relay.held.is_set() or proc.poll() is not None, HOLD_TIMEOUT, "hold")
            assert qemu_nbd_serving(src), "the client reads a qcow2 through qemu-nbd"
        finally:
            _, err = stop(proc, signal.SIGINT)
        assert proc.returncode == 130, err
        assert "interrupted" in err and "--resume" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not qemu_nbd_serving(src), "qemu-nbd outlived the client"
        assert len(list(state.glob("*.journal"))) == 1
        relay.release()
        done = run_client("upload", src, url(relay.port, ticket_id), *args, "--resume")
        assert done.returncode == 0, done.stderr
    assert same_guest_data(src, disk)
    daemon.result("Ticket.remove", uuid=ticket_id)
