"""A real ``vdsm-imageio serve --local`` daemon for integration tests.

The daemon runs as a subprocess in a directory of its own (never on tmpfs:
tmpfs has no O_DIRECT and its holes are not those of a disk file system).
Tests talk to it only as clients do: JSON-RPC lines on the control socket,
HTTPS with the daemon's generated CA, plain HTTP on its abstract unix
socket, and raw sockets for what a well-behaved client library would never
send.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
IO_TIMEOUT = 10.0
MiB = 1024**2


def _is_tmpfs(path: Path) -> bool:
    out = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "tmpfs"


def _base_dir() -> Path:
    """Where daemon directories go: /tmp unless it is a tmpfs."""
    tmp = Path(tempfile.gettempdir())
    if not _is_tmpfs(tmp):
        return tmp
    base = REPO / ".cache" / "integration"
    base.mkdir(parents=True, exist_ok=True)
    return base


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (a leading NUL means abstract)."""

    def __init__(self, address: str, timeout: float = IO_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Newline-delimited JSON-RPC 2.0 on the control socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self._ids = itertools.count(1)

    def send_line(self, data: bytes) -> Any:
        """Send one raw line, return the decoded reply line."""
        self.sock.sendall(data + b"\n")
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"control connection closed: {line!r}"
        return json.loads(line)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """The whole JSON-RPC response object."""
        req_id = next(self._ids)
        reply = self.send_line(
            json.dumps(
                {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
            ).encode()
        )
        assert reply.get("id") == req_id, reply
        return dict(reply)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Daemon:
    """One running daemon and the ways to talk to it."""

    def __init__(
        self,
        base: Path,
        conf: dict[str, dict[str, Any]] | None = None,
        *,
        directory: Path | None = None,
        proxy: bool = False,
        prefix: tuple[str, ...] = (),
        port: int = 0,
    ) -> None:
        # directory: start on a previous daemon's directory (a restart), or
        # with proxy, beside the daemon of that directory (serve --proxy,
        # whose own files are in DIR/proxy). prefix runs the command inside
        # something (ip netns exec NAME).
        self.dir = directory or Path(tempfile.mkdtemp(prefix="vdsm-it-", dir=base))
        self.proxy = proxy
        self.home = self.dir / "proxy" if proxy else self.dir
        self.images = self.dir / "images"
        self.ca = self.dir / "pki" / "ca.pem"
        self.control_path = str(self.home / "control.sock")
        self.log_path = self.home / "daemon.log"
        self.port = 0
        self.ticket_port = 0
        self.unix_socket = ""
        self.killed = False
        self._control: ControlClient | None = None
        self._ssl: ssl.SSLContext | None = None
        if conf:
            (self.home / "conf.d").mkdir(parents=True, exist_ok=True)
            (self.home / "conf.d" / "50-test.conf").write_text(_ini(conf))
        self.home.mkdir(parents=True, exist_ok=True)
        # A restarted daemon appends; log() is this instance's part only.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # owned until stop()
        self.proc = subprocess.Popen(
            [
                *prefix,
                str(REPO / ".venv" / "bin" / "vdsm-imageio"),
                "serve",
                "--local",
                str(self.dir),
                *(["--proxy"] if proxy else []),
                "--port",
                str(port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        try:
            self._wait_ready()
            info = self.result("Service.info")
            self.unix_socket = info["unix_socket"]
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if line.startswith("ready data="):
                    url = line.split()[1].removeprefix("data=")
                    self.port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
                    if (m := re.search(r" tickets=http://\S+:(\d+)/", line)) is not None:
                        self.ticket_port = int(m.group(1))
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"daemon not ready in {READY_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def evicted(self) -> int:
        """Connections the daemon evicted so far: EVICTED lines and summaries."""
        total = 0
        for line in self.log().splitlines():
            if (m := re.search(r"EVICTED (peer=|count=(\d+))", line)) is not None:
                total += int(m.group(2)) if m.group(2) else 1
        return total

    # Control channel.

    @property
    def control(self) -> ControlClient:
        if self._control is None:
            self._control = ControlClient(self.control_path)
        return self._control

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.control.call(method, **params)

    def result(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "error" not in reply, reply
        return reply["result"]

    def add_ticket(
        self,
        *,
        size: int,
        ops: tuple[str, ...] = ("read", "write"),
        data: bytes | None = None,
        sparse: bool = True,
        **extra: Any,
    ) -> tuple[str, Path]:
        """Create an image file of size bytes (data at its start) and a ticket."""
        ticket_id = str(uuidlib.uuid4())
        path = self.images / f"{ticket_id}.raw"
        with open(path, "wb") as f:
            if data:
                f.write(data)
            f.truncate(size)
        ticket = {
            "uuid": ticket_id,
            "size": size,
            "ops": list(ops),
            "timeout": 300,
            "url": path.as_uri(),
            "transfer_id": f"t-{ticket_id[:8]}",
            "sparse": sparse,
        }
        ticket.update(extra)
        self.result("Ticket.add", ticket=ticket)
        return ticket_id, path

    def status(self, ticket_id: str) -> dict[str, Any]:
        return dict(self.result("Ticket.status", uuid=ticket_id))

    # Data path.

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca))
        return self._ssl

    def https(self, timeout: float = IO_TIMEOUT) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=self.ssl_context
        )

    def unix(self, timeout: float = IO_TIMEOUT) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.unix_socket, timeout=timeout)

    def raw_tcp(self, timeout: float = IO_TIMEOUT) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def raw_tls(self, timeout: float = IO_TIMEOUT) -> ssl.SSLSocket:
        sock = self.raw_tcp(timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname="127.0.0.1")

    def raw_unix(self, timeout: float = IO_TIMEOUT) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.unix_socket)
        return sock

    # Lifecycle.

    def stop(self) -> bool:
        """SIGTERM and wait; True if the daemon exited in time."""
        if self._control is not None:
            self._control.close()
            self._control = None
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                clean = False
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return clean

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of the daemon runs after this."""
        if self._control is not None:
            self._control.close()
            self._control = None
        self.proc.kill()
        self.proc.wait()
        self._log.close()
        self.killed = True

    def remove(self) -> None:
        # A proxy's files are in its host daemon's directory: each removes
        # its own, and the last one the directory, in either order.
        if self.proxy:
            shutil.rmtree(self.home, ignore_errors=True)
        elif self.dir.is_dir():
            for entry in self.dir.iterdir():
                if entry.name == "proxy" and entry.is_dir():
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()


def _ini(conf: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, options in conf.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in options.items())
    return "\n".join(lines) + "\n"


def _stop(d: Daemon) -> None:
    clean = d.stop()
    log = d.log()
    # Shown by pytest only when the test failed.
    sys.stdout.write(f"--- daemon log ({d.dir}) ---\n{log[-20000:]}")
    if not clean:
        pytest.fail(
            f"daemon pid {d.proc.pid} did not exit within {STOP_TIMEOUT}s "
            f"of SIGTERM; log kept in {d.dir}"
        )
    if d.proc.returncode != 0:
        pytest.fail(f"daemon exited with {d.proc.returncode}; log kept in {d.dir}")
    # An unexpected exception is a bug even when the client got its answer.
    if "Traceback" in log:
        pytest.fail(f"daemon logged a traceback; log kept in {d.dir}")
    d.remove()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """A daemon with the default configuration, shared by a test module."""
    d = Daemon(_base_dir())
    try:
        yield d
    finally:
        _stop(d)


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., Daemon]]:
    """Start daemons with conf.d options: make_daemon(http={"max_writers": 1});
    make_daemon(directory=killed.dir) restarts on a killed daemon's directory."""
    started: list[Daemon] = []

    def make(
        directory: Path | None = None,
        *,
        proxy: bool = False,
        port: int = 0,
        **conf: dict[str, Any],
    ) -> Daemon:
        d = Daemon(_base_dir(), conf, directory=directory, proxy=proxy, port=port)
        started.append(d)
        return d

    yield make
    # Last started first: a proxy lives in the directory of its host daemon.
    for d in reversed(started):
        if not d.killed:  # a killed one has nothing left to stop
            _stop(d)
