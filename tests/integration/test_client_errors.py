"""Every failure the issue names ends in one line that says what is wrong
and what to do, and in the exit code ``--help`` documents for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.clientrun import MiB, run_client, start_client, stop, wait_for, write_runs
from tests.integration.relay import Relay
from tests.support.loopfs import ext4_on_loop, needs_root
from vdsm_imageio.client import errors
from vdsm_imageio.client.images import ImageConnection
from vdsm_imageio.client.session import Session, Settings
from vdsm_imageio.errors import BackendError
from vdsm_imageio.pki import ensure_local_pki

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

SIZE = 8 * MiB


def url(port: int, ticket_id: str) -> str:
    return f"https://127.0.0.1:{port}/images/{ticket_id}"


def failed(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The one line the client printed; it holds every word."""
    assert done.returncode == code, f"exit {done.returncode}, wanted {code}:\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    print(lines[0])
    return str(lines[0])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src.raw"
    write_runs(src, SIZE, [(0, SIZE)], seed=21)
    return src


def upload(
    daemon: Daemon, src: Path, ticket_id: str, tmp_path: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return run_client(
        "upload",
        src,
        url(daemon.port, ticket_id),
        "--cafile",
        daemon.ca,
        "--state-dir",
        tmp_path / "state",
        *extra,
    )


def test_wrong_ca_is_exit_3_and_names_cafile(daemon: Daemon, source: Path, tmp_path: Path) -> None:
    other = ensure_local_pki(tmp_path / "other-pki")
    ticket_id, _ = daemon.add_ticket(size=SIZE)
    done = run_client("upload", source, url(daemon.port, ticket_id), "--cafile", other.ca_file)
    failed(done, errors.UNTRUSTED, "cannot verify the certificate of 127.0.0.1", "--cafile")
    # No CA at all: the system's CAs do not know the daemon's either.
    done = run_client("download", url(daemon.port, ticket_id), tmp_path / "out.raw")
    failed(done, errors.UNTRUSTED, "unable to get local issuer certificate", "--insecure")
    assert not (tmp_path / "out.raw").exists()
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_expired_ticket_is_exit_4_and_asks_for_a_new_transfer(
    daemon: Daemon, source: Path, tmp_path: Path
) -> None:
    ticket_id, _ = daemon.add_ticket(size=SIZE, timeout=1)
    wait_for(lambda: daemon.status(ticket_id)["expires_in"] < 0, 10, "expiry")
    done = upload(daemon, source, ticket_id, tmp_path)
    failed(done, errors.REFUSED, "has expired", "new transfer")
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_upload_to_a_read_only_ticket_is_exit_4(
    daemon: Daemon, source: Path, tmp_path: Path
) -> None:
    ticket_id, disk = daemon.add_ticket(size=SIZE, ops=("read",))
    done = upload(daemon, source, ticket_id, tmp_path)
    failed(done, errors.REFUSED, "allows downloading only", "upload transfer")
    assert disk.read_bytes() == bytes(SIZE)
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_source_larger_than_the_disk_is_exit_5(
    daemon: Daemon, source: Path, tmp_path: Path
) -> None:
    ticket_id, disk = daemon.add_ticket(size=SIZE // 2)
    done = upload(daemon, source, ticket_id, tmp_path)
    failed(done, errors.TOO_LARGE, f"({SIZE} bytes", f"disk ({SIZE // 2} bytes)", "extend the disk")
    assert disk.read_bytes() == bytes(SIZE // 2), "nothing is sent"
    daemon.result("Ticket.remove", uuid=ticket_id)


@pytest.mark.loop
# A qcow2 source over the unix socket is spliced (client.upload): the
# server's reply to a body it stopped taking must still be read.
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_full_storage_on_the_server_is_exit_6(
    make_daemon: MakeDaemon, tmp_path: Path, fmt: str
) -> None:
    needs_root()
    d = make_daemon()
    src = tmp_path / "src.raw"
    write_runs(src, 48 * MiB, [(0, 48 * MiB)], seed=22)
    if fmt == "qcow2":
        qcow2 = tmp_path / "src.qcow2"
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(src), str(qcow2)], check=True
        )
        src = qcow2
    with ext4_on_loop(d.images, "fs", size=24 * MiB, reserve=False) as fs:
        disk = fs / "disk.raw"
        with open(disk, "wb") as f:
            f.truncate(48 * MiB)
        ticket_id = "6c0c4bd6-9d3c-4bd2-9c1b-5d6f3e1f2a01"
        d.result(
            "Ticket.add",
            ticket={
                "uuid": ticket_id,
                "size": 48 * MiB,
                "ops": ["write"],
                "timeout": 300,
                "url": disk.as_uri(),
                "transfer_id": "client-full",
                "sparse": True,
            },
        )
        done = upload(d, src, ticket_id, tmp_path)
        d.result("Ticket.remove", uuid=ticket_id)
    failed(done, errors.STORAGE_FULL, "storage is full", "No space left on device", "--resume")


def test_nothing_listening_is_exit_7(source: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_client("upload", source, url(port, "a-ticket"), "--state-dir", tmp_path)
    failed(done, errors.UNREACHABLE, f"cannot reach 127.0.0.1:{port}", "Connection refused")


def test_daemon_gone_during_the_transfer_is_exit_7_and_offers_resume(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    d = make_daemon()
    src = tmp_path / "src.raw"
    size = 64 * MiB
    write_runs(src, size, [(0, size)], seed=23)
    ticket_id, _ = d.add_ticket(size=size)
    with Relay(d.port, rate=32 * MiB, hold_up_after=size // 2) as relay:
        proc = start_client(
            "upload",
            src,
            url(relay.port, ticket_id),
            "--no-unix-socket",
            "--cafile",
            d.ca,
            "--state-dir",
            tmp_path / "state",
            "-q",
        )
        try:
            wait_for(lambda: relay.held.is_set() or proc.poll() is not None, 60, "hold")
            d.kill()
            relay.release()
            proc.wait(60)
        finally:
            out, err = stop(proc, signal.SIGKILL)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    failed(done, errors.UNREACHABLE, "lost the connection to 127.0.0.1", "--resume")
    assert list((tmp_path / "state").glob("*.journal")), "the journal is kept"


def test_existing_download_target_is_exit_2(daemon: Daemon, tmp_path: Path) -> None:
    ticket_id, _ = daemon.add_ticket(size=SIZE, ops=("read",))
    target = tmp_path / "keep.raw"
    target.write_bytes(b"precious")
    done = run_client("download", url(daemon.port, ticket_id), target, "--cafile", daemon.ca)
    failed(done, errors.USAGE, "exists", "--overwrite")
    assert target.read_bytes() == b"precious"
    done = run_client(
        "download", url(daemon.port, ticket_id), target, "--cafile", daemon.ca, "--overwrite"
    )
    assert done.returncode == 0, done.stderr
    assert os.path.getsize(target) == SIZE
    daemon.result("Ticket.remove", uuid=ticket_id)


def test_help_documents_every_exit_code() -> None:
    for command in ("upload", "download", "checksum"):
        text = run_client(command, "--help").stdout
        for _, code, why in errors.EXIT_CODES:
            assert f"{code:>3}  {why}" in text, (command, code)


def test_source_failing_mid_splice_closes_the_connection(daemon: Daemon) -> None:
    ticket_id, path = daemon.add_ticket(size=SIZE)
    with Session(url(daemon.port, ticket_id), Settings(cafile=str(daemon.ca))) as session:
        conn = ImageConnection(session.endpoint)
        try:
            assert conn.can_splice

            def fill(wfd: int, offset: int, length: int) -> int:
                raise BackendError(reason="the source broke")

            with pytest.raises(errors.LocalImageError, match="the source broke"):
                conn.put_spliced(0, 2 * MiB, [fill, fill], progress=lambda n: None)
            # On the half-sent body this request would be taken as its rest.
            conn.zero(0, MiB)
            conn.flush()
        finally:
            conn.close()
    assert path.read_bytes() == bytes(SIZE)
