"""A real ``vdsm-imageio serve --local`` daemon and the clients that drive it.

The integration suite, the browser lane and the VM lane's guest start the
daemon as a subprocess in a directory of its own and talk to it only as
vdsm and clients do: JSON-RPC lines on the control socket, HTTPS with the
CA it generated, plain HTTP on the abstract unix socket it advertises, and
raw sockets for what a well-behaved client library would never send.
The lanes differ only in their time limits (``Limits``): an emulated guest
on a 9p root needs minutes where loopback on the host needs seconds.
"""

from __future__ import annotations

import contextlib
import http.client
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from tests.support.control import ControlClient

# The client's own connection class: one way to speak HTTP on a unix socket.
from vdsm_imageio.client.http import UnixHTTPConnection as UnixHTTPConnection

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / ".venv" / "bin" / "vdsm-imageio"


@dataclass(frozen=True)
class Limits:
    """Seconds a lane waits for its daemon."""

    ready: float  # from the start to the ready line
    stop: float  # from SIGTERM to the exit, before SIGKILL
    io: float  # every socket operation of a client
    poll: float  # between two looks at the log while starting


LOOPBACK = Limits(ready=20.0, stop=5.0, io=10.0, poll=0.05)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, then SIGKILL after timeout seconds; True if it exited in time."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    return True


class Daemon:
    """One running daemon and the ways to talk to it.

    directory may hold a previous daemon's state (a restart): its log is
    appended to and ``log()`` returns this instance's part only.
    """

    def __init__(
        self,
        directory: Path,
        conf: str = "",
        *,
        limits: Limits = LOOPBACK,
        proxy: bool = False,
        prefix: tuple[str, ...] = (),
        port: int = 0,
    ) -> None:
        # proxy: a proxy beside the daemon of directory (serve --proxy, whose
        # own files are in DIR/proxy). prefix runs the command inside
        # something (ip netns exec NAME). port: 0 for any free port.
        self.dir = directory
        self.limits = limits
        self.proxy = proxy
        self.home = directory / "proxy" if proxy else directory
        self.images = directory / "images"
        self.ca = directory / "pki" / "ca.pem"
        self.control_path = str(self.home / "control.sock")
        self.log_path = self.home / "daemon.log"
        self.run_dir = self.home / "run"
        self.port = 0
        self.ticket_port = 0
        self.unix_socket = ""
        self.killed = False
        self._control: ControlClient | None = None
        self._ssl: ssl.SSLContext | None = None
        self.home.mkdir(parents=True, exist_ok=True)
        if conf:
            (self.home / "conf.d").mkdir(parents=True, exist_ok=True)
            (self.home / "conf.d" / "50-test.conf").write_text(conf)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log: IO[bytes] = open(self.log_path, "ab")  # owned until stop()
        argv = [*prefix, str(PROGRAM), "serve", "--local", str(directory)]
        argv += ["--proxy"] if proxy else []
        self.proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        try:
            self._wait_ready()
            self.unix_socket = str(self.result("Service.info")["unix_socket"])
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.limits.ready
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
            time.sleep(self.limits.poll)
        raise RuntimeError(f"daemon not ready in {self.limits.ready}s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def evicted(self) -> int:
        """Connections the daemon evicted so far: EVICTED lines and summaries."""
        lines = self.log().splitlines()
        found = [m for line in lines if (m := re.search(r"EVICTED (peer=|count=(\d+))", line))]
        return sum(int(m.group(2)) if m.group(2) else 1 for m in found)

    # Control channel.

    @property
    def control(self) -> ControlClient:
        if self._control is None:
            self._control = ControlClient(self.control_path, self.limits.io)
        return self._control

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.control.call(method, **params)

    def result(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "error" not in reply, f"{reply}\n--- daemon log ---\n{self.log_tail()}"
        return reply["result"]

    def subscribe(self, events: list[str]) -> ControlClient:
        """A second control connection that receives events."""
        sub = ControlClient(self.control_path, self.limits.io, events=True)
        reply = sub.call("Events.subscribe", events=events)
        assert reply.get("result") is True, reply
        return sub

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

    def https(self, timeout: float | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=self._timeout(timeout), context=self.ssl_context
        )

    def unix(self, timeout: float | None = None) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.unix_socket, timeout=self._timeout(timeout))

    def tickets(self, timeout: float | None = None) -> UnixHTTPConnection:
        """The HTTP ticket API on a unix socket, as vdsm speaks it."""
        return UnixHTTPConnection(str(self.dir / "tickets.sock"), timeout=self._timeout(timeout))

    def raw_tcp(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=self._timeout(timeout))

    def raw_tls(self, timeout: float | None = None) -> ssl.SSLSocket:
        sock = self.raw_tcp(timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname="127.0.0.1")

    def raw_unix(self, timeout: float | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout(timeout))
        sock.connect(self.unix_socket)
        return sock

    def _timeout(self, timeout: float | None) -> float:
        return self.limits.io if timeout is None else timeout

    # Lifecycle.

    def stop(self) -> bool:
        """SIGTERM and wait; True if the daemon exited in time."""
        self._close_control()
        clean = terminate(self.proc, self.limits.stop)
        self._log.close()
        return clean

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of the daemon runs after this."""
        self._close_control()
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

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None


class MakeDaemon(Protocol):
    """The make_daemon fixture: conf.d options by section, a restart, or a
    proxy beside the daemon of directory (on port, 0 for any)."""

    def __call__(
        self,
        directory: Path | None = None,
        *,
        proxy: bool = False,
        port: int = 0,
        **conf: dict[str, Any],
    ) -> Daemon: ...


def ini(conf: dict[str, dict[str, Any]]) -> str:
    """conf.d text of options by section."""
    lines = []
    for section, options in conf.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in options.items())
    return "\n".join(lines) + "\n"


def new_directory() -> Path:
    """A fresh daemon directory, never on tmpfs: tmpfs has no O_DIRECT and
    its holes are not those of a disk file system."""
    tmp = Path(tempfile.gettempdir())
    base = tmp if not _is_tmpfs(tmp) else REPO / ".cache" / "integration"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="vdsm-it-", dir=base))


def _is_tmpfs(path: Path) -> bool:
    out = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip() == "tmpfs"


def stop_and_check(d: Daemon) -> str | None:
    """Stop the daemon; what went wrong in its life, None if nothing."""
    if not d.stop():
        return f"daemon pid {d.proc.pid} did not exit within {d.limits.stop}s of SIGTERM"
    if d.proc.returncode != 0:
        return f"daemon exited with {d.proc.returncode}"
    # An unexpected exception is a bug even when every client got its answer.
    if "Traceback" in d.log():
        return "daemon logged a traceback"
    return None


def finish(d: Daemon) -> str | None:
    """Stop the daemon and remove its directory if all went well; else keep
    it and say what went wrong. The log goes to stdout, which pytest shows
    only for a failed test."""
    problem = stop_and_check(d)
    sys.stdout.write(f"--- daemon log ({d.dir}) ---\n{d.log()[-20000:]}")
    if problem is not None:
        return f"{problem}; log kept in {d.dir}"
    d.remove()
    return None
