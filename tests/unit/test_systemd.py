"""sd_notify, identities and the privilege drop; the shipped unit file."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vdsm_imageio import systemd

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "vdsm-imageio.service"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket playing the service manager's notify socket."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_notify_sends_state_to_notify_socket(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1"


def test_notify_reaches_abstract_address() -> None:
    name = f"vdsm-imageio-test-{uuid.uuid4()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_without_manager_does_nothing() -> None:
    assert systemd.notify("READY=1", {}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_notify_to_missing_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "NOTIFY failed" in caplog.text


def test_identity_of_user_defaults_to_its_primary_group() -> None:
    who = systemd.identity("nobody", "")
    assert (who.user, who.uid) == ("nobody", 65534)
    assert who.gid == 65534


def test_identity_with_group() -> None:
    assert systemd.identity("nobody", "root").gid == 0


@pytest.mark.parametrize("user, group", [("no-such-user-x", ""), ("nobody", "no-such-group-x")])
def test_unknown_identity_is_an_error(user: str, group: str) -> None:
    with pytest.raises(systemd.IdentityError, match="no such"):
        systemd.identity(user, group)


DROP = """
import json, os, sys
from vdsm_imageio import systemd
who = systemd.identity("nobody", "nogroup")
systemd.drop_privileges(who, chown=[sys.argv[1], "\\0abstract-is-skipped", ""])
print(json.dumps({"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups()}))
"""


def test_drop_privileges_gives_paths_away_and_cannot_be_undone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    owned = tmp_path / "control.sock"
    owned.write_text("")
    proc = subprocess.run(
        [sys.executable, "-c", DROP, str(owned)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ids = json.loads(proc.stdout)
    assert ids["uid"] == [65534] * 3
    assert ids["gid"] == [65534] * 3
    assert 0 not in ids["groups"]
    st = owned.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)


class CaseSensitiveParser(configparser.ConfigParser):
    """systemd's keys are case-sensitive; ConfigParser lowers them by default."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def test_unit_file_declares_a_notify_service() -> None:
    unit = CaseSensitiveParser(strict=False, interpolation=None)
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["RuntimeDirectory"] == "vdsm-imageio"
    assert service["ExecStart"].endswith("/vdsm-imageio serve")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    command = REPO / ".venv" / "bin" / "vdsm-imageio"
    text = "\n".join(
        f"ExecStart={command} serve" if line.startswith("ExecStart=") else line
        for line in UNIT.read_text().splitlines()
    )
    unit = tmp_path / "vdsm-imageio.service"
    unit.write_text(text + "\n")
    proc = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify warns about unknown keys and bad values but exits 0 anyway.
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if str(unit) in line]
    assert proc.returncode == 0 and problems == [], proc.stdout + proc.stderr


WAITER = """
import signal, threading, time
from vdsm_imageio.systemd import Signals
signals = Signals([signal.SIGUSR1])
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
# Only the other thread can take the signal now, as happens at random in a
# daemon full of threads.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
print("waiting", flush=True)
print(signals.wait(), flush=True)
"""


def test_signal_taken_by_another_thread_wakes_the_waiter() -> None:
    proc = subprocess.Popen([sys.executable, "-c", WAITER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=10)
        assert out == f"{int(signal.SIGUSR1)}\n"
    finally:
        proc.kill()
        proc.wait()
