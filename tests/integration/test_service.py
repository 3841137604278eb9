"""The daemon as a system service: readiness notification, prompt SIGTERM,
privilege drop and logging configured from conf.d."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import MakeDaemon

KiB = 1024
MiB = 1024**2
GiB = 1024**3
NOBODY = 65534


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A service manager's notify socket, named in the daemon's environment."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def test_daemon_notifies_ready_then_stopping(
    make_daemon: MakeDaemon, notify_socket: socket.socket
) -> None:
    daemon = make_daemon()
    assert notify_socket.recv(4096) == b"READY=1"
    # Ready means ready: the control channel answers.
    assert daemon.result("Ticket.list") == []
    assert daemon.stop()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert daemon.proc.returncode == 0


def test_daemon_notifies_abstract_socket(
    make_daemon: MakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"vdsm-imageio-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        make_daemon()
        assert sock.recv(4096) == b"READY=1"


def test_sigterm_during_upload_exits_within_a_second(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    ticket_id, _ = daemon.add_ticket(size=GiB)
    sock = daemon.raw_tls()
    sock.sendall(
        f"PUT /images/{ticket_id} HTTP/1.1\r\nHost: x\r\nContent-Length: {GiB}\r\n\r\n".encode()
    )
    stop = threading.Event()

    def send() -> None:
        chunk = b"\x5a" * (64 * KiB)
        try:
            while not stop.is_set():
                sock.sendall(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.status(ticket_id)["transferred"] < MiB:
            assert time.monotonic() < deadline, "the upload did not start"
            time.sleep(0.05)
        assert daemon.status(ticket_id)["active"] is True

        pid = daemon.proc.pid
        start = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(10)
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        # Wakes the sender blocked in sendall; close() alone would not.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        sender.join(10)
        sock.close()
    assert elapsed < 1.0, f"exit took {elapsed:.2f}s"
    assert daemon.proc.returncode == 0
    assert not Path(f"/proc/{pid}").exists()
    log = daemon.log()
    assert "STOPPED" in log
    assert "Traceback" not in log


def test_privileges_dropped_after_binding(make_daemon: MakeDaemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    daemon = make_daemon(daemon={"drop_privileges": "yes", "user": "nobody", "group": "nogroup"})
    # Like /run/vdsm-imageio under systemd: the service user's directory.
    os.chown(daemon.dir, NOBODY, NOBODY)
    os.chmod(daemon.dir, 0o755)

    ids = proc_ids(daemon.proc.pid)
    assert ids["Uid"] == [NOBODY] * 4
    assert ids["Gid"] == [NOBODY] * 4
    assert 0 not in ids["Groups"]
    for name in ("control.sock", "tickets.sock"):
        st = os.stat(daemon.dir / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        assert stat.S_IMODE(st.st_mode) == 0o660
    run = os.stat(daemon.dir / "run")
    assert (run.st_uid, run.st_gid) == (NOBODY, NOBODY)

    # The data path works as the service user on the user's image.
    ticket_id, path = daemon.add_ticket(size=MiB)
    os.chown(path, NOBODY, NOBODY)
    data = os.urandom(MiB)
    con = daemon.https()
    con.request("PUT", f"/images/{ticket_id}", body=data)
    res = con.getresponse()
    res.read()
    assert res.status == 200
    con.request("GET", f"/images/{ticket_id}")
    res = con.getresponse()
    assert res.status == 200
    assert res.read() == data
    con.close()
    assert daemon.result("Ticket.remove", uuid=ticket_id) is True
    assert daemon.stop()
    assert daemon.proc.returncode == 0
    assert not (daemon.dir / "control.sock").exists()


def proc_ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    return out


def test_unknown_service_user_stops_start_with_a_message(tmp_path: Path) -> None:
    conf = tmp_path / "local" / "conf.d"
    conf.mkdir(parents=True)
    (conf / "50-user.conf").write_text("[daemon]\ndrop_privileges = yes\nuser = no-such-user-x\n")
    command = Path(sys.executable).parent / "vdsm-imageio"
    proc = subprocess.run(
        [str(command), "serve", "--local", str(tmp_path / "local"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no such user: 'no-such-user-x'" in proc.stderr


def test_logging_goes_to_rotated_file_at_configured_level(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    log_file = tmp_path / "log" / "daemon.log"
    log_file.parent.mkdir()
    daemon = make_daemon(
        logging={"file": str(log_file), "level": "DEBUG", "max_bytes": 4096, "backups": 2}
    )
    for _ in range(20):
        ticket_id, _ = daemon.add_ticket(size=MiB)
        daemon.result("Ticket.remove", uuid=ticket_id)
    text = "".join(p.read_text() for p in sorted(log_file.parent.iterdir()))
    assert "READY data=" in text
    # DEBUG records, e.g. control connections opening, are kept.
    assert "OPEN connection=" in text
    rotated = sorted(p.name for p in log_file.parent.iterdir())
    assert rotated == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    # Only the ready line goes to stderr when a log file is configured.
    assert "READY data=" not in daemon.log()
