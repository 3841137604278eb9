"""A daemon killed with SIGKILL while it serves an nbd volume ticket, then
restarted on the same directory: nothing of the old one is left (no
qemu-nbd, no socket, pid file or link) and new tickets work."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.procs import running

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

MiB = 1024**2
WAIT = 10.0


def qemu_nbd_of(d: Daemon) -> list[int]:
    """Live qemu-nbd processes serving something under d's directory."""
    marker = os.fsencode(str(d.dir)) + b"/"
    return [pid for pid, argv in running(b"qemu-nbd") if any(marker in a for a in argv)]


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """qemu-nbd pids a test saw; any still running at the end is killed."""
    seen: list[int] = []
    yield seen
    for pid in seen:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if argv0 == b"qemu-nbd":
            os.kill(pid, signal.SIGKILL)


def make_volume(d: Daemon, data: bytes) -> dict[str, Any]:
    ids = {"sd_id": str(uuid.uuid4()), "img_id": str(uuid.uuid4()), "vol_id": str(uuid.uuid4())}
    path = d.images / "server:_export" / ids["sd_id"] / "images" / ids["img_id"]
    path.mkdir(parents=True)
    with open(path / ids["vol_id"], "wb") as f:
        f.write(data)
    return {"domain": "file", **ids, "nbd": True}


def nbd_ticket(vol: dict[str, Any], ops: list[str], size: int) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "ops": ops,
        "timeout": 300,
        "transfer_id": f"crash-{uuid.uuid4().hex[:8]}",
        "volume": vol,
    }


def download(d: Daemon, ticket_id: str) -> bytes:
    conn = d.unix()
    try:
        conn.request("GET", f"/images/{ticket_id}")
        res = conn.getresponse()
        body = res.read()
        assert res.status == 200, body
        return body
    finally:
        conn.close()


def upload(d: Daemon, ticket_id: str, data: bytes) -> None:
    conn = d.unix()
    try:
        conn.request("PUT", f"/images/{ticket_id}", body=data)
        res = conn.getresponse()
        assert res.status == 200, res.read()
    finally:
        conn.close()


def leftovers(d: Daemon) -> list[str]:
    """What of a previous daemon could be in the run directory."""
    run = d.dir / "run"
    nbd = [p.name for p in (run / "nbd").iterdir()] if (run / "nbd").exists() else []
    storage = run / "storage"
    links = [str(p) for p in storage.rglob("*") if p.is_symlink()] if storage.exists() else []
    return nbd + links


def serving_then_killed(
    make_daemon: MakeDaemon, strays: list[int], *, stop_server: bool
) -> tuple[Daemon, dict[str, Any], bytes]:
    """A daemon serving a written nbd volume ticket, killed with SIGKILL."""
    d = make_daemon()
    size = 4 * MiB
    vol = make_volume(d, b"\0" * size)
    ticket = nbd_ticket(vol, ["write"], size)
    d.result("Ticket.add", ticket=ticket)
    data = os.urandom(size)
    upload(d, ticket["uuid"], data)
    servers = qemu_nbd_of(d)
    strays.extend(servers)
    assert len(servers) == 1, servers
    names = leftovers(d)
    assert any(n.endswith(".pid") for n in names), names
    assert any(n.endswith(".sock") for n in names), names
    assert any("/storage/" in n for n in names), names
    if stop_server:
        # A stopped process keeps the parent-death SIGTERM pending: it
        # survives the daemon, as one stuck in the kernel would.
        os.kill(servers[0], signal.SIGSTOP)
    d.kill()
    return d, vol, data


def test_killed_daemon_leaves_no_qemu_nbd_and_restart_cleans_up(
    make_daemon: MakeDaemon, strays: list[int]
) -> None:
    old, vol, data = serving_then_killed(make_daemon, strays, stop_server=False)
    assert wait_until(lambda: not qemu_nbd_of(old)), "qemu-nbd outlived the killed daemon"
    d = make_daemon(directory=old.dir)
    assert leftovers(d) == []
    log = d.log()
    assert "CLEANUP removed stale link" in log
    assert "CLEANUP done" in log and "links=1" in log
    # The volume is served again, by a new qemu-nbd, with the data written.
    ticket = nbd_ticket(vol, ["read"], len(data))
    d.result("Ticket.add", ticket=ticket)
    strays.extend(qemu_nbd_of(d))
    assert download(d, ticket["uuid"]) == data
    d.result("Ticket.remove", uuid=ticket["uuid"])
    assert qemu_nbd_of(d) == []
    assert leftovers(d) == []


def test_server_that_survived_the_daemon_is_stopped_at_restart(
    make_daemon: MakeDaemon, strays: list[int]
) -> None:
    old, vol, data = serving_then_killed(make_daemon, strays, stop_server=True)
    time.sleep(0.5)
    survivors = qemu_nbd_of(old)
    assert len(survivors) == 1, "the stopped qemu-nbd was expected to survive"
    d = make_daemon(directory=old.dir)
    assert qemu_nbd_of(d) == []
    assert leftovers(d) == []
    assert f"CLEANUP stopped a previous instance's server pid={survivors[0]}" in d.log()
    ticket = nbd_ticket(vol, ["read", "write"], len(data))
    d.result("Ticket.add", ticket=ticket)
    strays.extend(qemu_nbd_of(d))
    assert download(d, ticket["uuid"]) == data
    d.result("Ticket.remove", uuid=ticket["uuid"])


def test_pid_file_of_an_unrelated_process_is_left_alone(make_daemon: MakeDaemon) -> None:
    first = make_daemon()
    first.stop()
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = first.dir / "run" / "nbd" / "0123456789abcdef.pid"
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        # The pid of a process we did not start, recorded as a qemu-nbd.
        argv = ["qemu-nbd", f"--socket={pid_file.with_suffix('.sock')}", "/img"]
        pid_file.write_text(f'{{"pid": {unrelated.pid}, "argv": {argv!r}, "start_time": null}}')
        pid_file.write_text(pid_file.read_text().replace("'", '"'))
        first.killed = True  # stopped already; the restart owns the directory
        d = make_daemon(directory=first.dir)
        time.sleep(0.2)
        assert unrelated.poll() is None, "an unrelated process was killed"
        assert f"CLEANUP left alone pid={unrelated.pid}" in d.log()
        assert not pid_file.exists()
    finally:
        unrelated.kill()
        unrelated.wait(WAIT)


def test_second_daemon_on_a_live_daemons_directory_does_not_start(
    make_daemon: MakeDaemon, strays: list[int]
) -> None:
    d = make_daemon()
    size = MiB
    vol = make_volume(d, b"x" * size)
    ticket = nbd_ticket(vol, ["read"], size)
    d.result("Ticket.add", ticket=ticket)
    servers = qemu_nbd_of(d)
    strays.extend(servers)
    proc = subprocess.run(
        [
            str(Path(__file__).resolve().parents[2] / ".venv/bin/vdsm-imageio"),
            "serve",
            "--local",
            str(d.dir),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "another vdsm-imageio uses the run directory" in proc.stderr
    # The live daemon's server was not touched.
    assert qemu_nbd_of(d) == servers
    assert download(d, ticket["uuid"]) == b"x" * size
    d.result("Ticket.remove", uuid=ticket["uuid"])
