"""ovirt-imageio 2.5.1's client uploads to and downloads from our daemon.

The client runs in its own virtual environment (tests/compat/
setup-ovirt-imageio.sh creates it) through tests/compat/driver.py, against
a real ``vdsm-imageio serve --local`` on loopback, over HTTPS verified by
the generated CA and over the abstract unix socket the daemon advertises.
Run alone with ``pytest -m compat``.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "compat" / "driver.py"
DAEMON = ROOT / ".venv" / "bin" / "vdsm-imageio"

MiB = 1024**2
IMAGE_SIZE = 256 * MiB
# (offset, length) of random data; the rest stays holes. Runs start and end
# off block boundaries, touch both ends of the image and one spans more
# than the client's 4 MiB buffer.
DATA_RUNS = [
    (0, 4096),
    (1 * MiB + 512, 3 * MiB - 1000),
    (17 * MiB, 9 * MiB + 7),
    (64 * MiB - 4096, 8192),
    (130 * MiB, 20 * MiB),
    (IMAGE_SIZE - 5 * MiB - 3, 5 * MiB + 3),
]
READY = re.compile(r"^ready data=(?P<data>https://\S+) control=(?P<control>\S+)$")
# ovirt_imageio.client.MAX_WORKERS: connections per transfer, at most.
CLIENT_WORKERS = 4
START_TIMEOUT = 60.0
TRANSFER_TIMEOUT = 600.0


@dataclass(frozen=True)
class Daemon:
    local_dir: Path
    data_url: str
    control: Path
    log: Path

    @property
    def ca_file(self) -> Path:
        return self.local_dir / "pki" / "ca.pem"

    def call(self, method: str, **params: Any) -> Any:
        """One newline-delimited JSON-RPC 2.0 request on the control socket."""
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.control))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        response = json.loads(reply)
        if "error" in response:
            raise AssertionError(f"{method} failed: {response['error']}")
        return response["result"]

    def add_ticket(self, path: Path, ops: list[str], transfer_id: str) -> str:
        ticket_id = str(uuid.uuid4())
        self.call(
            "Ticket.add",
            ticket={
                "uuid": ticket_id,
                "size": IMAGE_SIZE,
                "ops": ops,
                "timeout": 300,
                "url": path.as_uri(),
                "transfer_id": transfer_id,
                "sparse": True,
            },
        )
        return self.data_url + ticket_id


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("compat")) as d:
        yield d


@pytest.fixture(scope="module")
def limited_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Limits equal to the client's worker count, the tightest it accepts."""
    local_dir = tmp_path_factory.mktemp("compat-limited")
    (local_dir / "conf.d").mkdir()
    (local_dir / "conf.d" / "50-limits.conf").write_text(
        f"[http]\nmax_readers = {CLIENT_WORKERS}\nmax_writers = {CLIENT_WORKERS}\n"
    )
    with running_daemon(local_dir) as d:
        yield d


@contextmanager
def running_daemon(local_dir: Path) -> Iterator[Daemon]:
    if not os.access(DAEMON, os.X_OK):
        pytest.fail(
            f"the daemon command {DAEMON.relative_to(ROOT)} is missing; "
            "install the project with `make deps`"
        )
    log = local_dir / "daemon.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(DAEMON), "serve", "--local", str(local_dir), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        ready = wait_ready(proc, log)
        yield Daemon(
            local_dir=local_dir,
            data_url=ready["data"],
            control=Path(ready["control"]),
            log=log,
        )
    finally:
        stop(proc)


def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            match = READY.match(line)
            if match:
                return match.groupdict()
        if proc.poll() is not None:
            pytest.fail(f"the daemon exited with {proc.returncode} before ready:\n" + tail(log))
        time.sleep(0.1)
    pytest.fail(f"no ready line within {START_TIMEOUT:g} seconds:\n" + tail(log))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def make_image(path: Path) -> None:
    rnd = random.Random(42)
    with path.open("wb") as f:
        f.truncate(IMAGE_SIZE)
        for offset, length in DATA_RUNS:
            f.seek(offset)
            f.write(rnd.randbytes(length))


def run_driver(python: Path, daemon: Daemon, *args: str, unix: bool) -> dict[str, Any]:
    cmd = [str(python), str(DRIVER), *args, "--cafile", str(daemon.ca_file)]
    if not unix:
        cmd.append("--no-unix")
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TRANSFER_TIMEOUT, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"ovirt-imageio client failed: {' '.join(args[:1])}\n"
            f"--- client log (tail) ---\n{result.stderr[-6000:]}\n"
            f"--- daemon log (tail) ---\n{tail(daemon.log)}"
        )
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def assert_identical(a: Path, b: Path) -> None:
    result = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def assert_transport(report: dict[str, Any], *, unix: bool) -> None:
    options = report.get("options", {})
    assert options.get("unix_socket"), f"no unix_socket advertised: {report}"
    if unix:
        # Only the first connection, for OPTIONS, goes over TLS.
        assert report["unix_connections"] >= 1, f"client stayed on HTTPS: {report}"
        assert report["https_connections"] == 1, report
    else:
        assert report["unix_connections"] == 0, report
        assert report["https_connections"] >= 1, report


def round_trip(python: Path, daemon: Daemon, tmp_path: Path, *, unix: bool, name: str) -> None:
    """Upload a sparse image with one ticket, download it with another."""
    source = tmp_path / "source.raw"
    make_image(source)
    target = daemon.local_dir / "images" / f"{name}.raw"
    target.parent.mkdir(exist_ok=True)
    with target.open("wb") as f:
        f.truncate(IMAGE_SIZE)

    put_url = daemon.add_ticket(target, ["write"], f"compat-upload-{name}")
    report = run_driver(python, daemon, "upload", str(source), put_url, unix=unix)
    assert_transport(report, unix=unix)
    assert_identical(source, target)

    get_url = daemon.add_ticket(target, ["read"], f"compat-download-{name}")
    copy = tmp_path / "download.raw"
    report = run_driver(python, daemon, "download", get_url, str(copy), unix=unix)
    assert_transport(report, unix=unix)
    assert_identical(source, copy)

    for url in (put_url, get_url):
        assert daemon.call("Ticket.remove", uuid=url.rsplit("/", 1)[1]) is True


@pytest.mark.parametrize("transport", ["https", "unix"])
def test_client_upload_then_download_round_trips(
    client_python: Path, daemon: Daemon, tmp_path: Path, transport: str
) -> None:
    round_trip(client_python, daemon, tmp_path, unix=transport == "unix", name=transport)


@pytest.mark.parametrize("transport", ["https", "unix"])
def test_client_works_with_limits_equal_to_its_worker_count(
    client_python: Path, limited_daemon: Daemon, tmp_path: Path, transport: str
) -> None:
    # The download keeps its first connection (OPTIONS, extents) open while
    # max_readers clones read; the upload's first connection moves to the
    # unix socket right after OPTIONS.
    round_trip(
        client_python,
        limited_daemon,
        tmp_path,
        unix=transport == "unix",
        name=f"limited-{transport}",
    )
