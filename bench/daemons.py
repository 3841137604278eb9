"""The daemons under test, each with its shipped defaults.

Both serve TLS on 127.0.0.1 with the same certificates (ours generates
them in its --local directory on first start; the reference reads them
from there), plain HTTP on an abstract unix socket (learned from
``OPTIONS /images/*``), and a control channel on a unix socket: JSON-RPC
lines for ours, ovirt-imageio's HTTP ticket API for the reference. The
configuration written for them says only where things are; the I/O
settings (buffer sizes, parallel reads) are each daemon's own defaults,
as users run them, unless a tuned buffer size is asked for. A daemon is
ready when ``OPTIONS /images/*`` over TLS answers, which is also what the
startup case measures.

A third daemon, ours with ``[http] nbd_splice = false`` (LIBNBD_ONLY),
runs only the nbd download case: the same download with and without the
hand-written NBD reader. With ``--before DIR`` another one (BEFORE) runs
the code of an earlier checkout from the same virtual environment and
takes its turn in every case: old and new code measured in one run.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.control import ControlClient
from tests.support.daemon import UnixHTTPConnection, terminate

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 60.0
LIBNBD_ONLY = "ours-libnbd"
BEFORE = "before"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """One daemon process; subclasses know how to start and control it."""

    name = ""
    label = ""

    def __init__(self, workdir: Path, *, buffer_size: int | None, ca: Path | None = None) -> None:
        self.dir = workdir
        self.buffer_size = buffer_size
        self.ca = ca or workdir / "pki" / "ca.pem"
        self.port = 0
        self.unix_socket = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._ssl: ssl.SSLContext | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def data_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/images/"

    def https(self, timeout: float = IO_TIMEOUT) -> http.client.HTTPSConnection:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=self._ssl
        )

    def unix(self, timeout: float = IO_TIMEOUT) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.unix_socket, timeout=timeout)

    # Lifecycle.

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        started = time.monotonic()
        self.proc = self._spawn()
        self._ssl = None
        try:
            options = self._wait_ready()
            self.startup_seconds = time.monotonic() - started
            self.unix_socket = options["unix_socket"]
            self._connect_control()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> float:
        """SIGTERM; seconds until the process exited (killed after STOP_TIMEOUT)."""
        self._close_control()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        if not terminate(proc, STOP_TIMEOUT):
            return float("inf")
        return time.monotonic() - started

    def _wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode}; log in {self.dir}"
                )
            if self.ca.exists():
                try:
                    return self.options_any()
                except (OSError, http.client.HTTPException):
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.label} not ready in {START_TIMEOUT}s; log in {self.dir}")

    def options_any(self) -> dict[str, Any]:
        conn = self.https(timeout=2.0)
        try:
            conn.request("OPTIONS", "/images/*")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"OPTIONS /images/* -> {resp.status}")
            return dict(json.loads(body))
        finally:
            conn.close()

    # Subclass hooks.

    def settings(self) -> dict[str, Any]:
        """The I/O settings in effect (from the daemon's --show-config)."""
        raise NotImplementedError

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _connect_control(self) -> None:
        raise NotImplementedError

    def _close_control(self) -> None:
        raise NotImplementedError

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        raise NotImplementedError

    def remove_ticket(self, ticket_id: str) -> None:
        raise NotImplementedError


class Ours(Daemon):
    name = "ours"
    label = "vdsm-imageio"

    def __init__(
        self,
        workdir: Path,
        *,
        buffer_size: int | None,
        program: Path,
        url_root: Path,
        nbd_splice: bool = True,
        checkout: Path | None = None,
    ) -> None:
        super().__init__(workdir, buffer_size=buffer_size)
        self.program = program
        self.nbd_splice = nbd_splice
        self.checkout = checkout
        if not nbd_splice:
            self.name = LIBNBD_ONLY
            self.label = "vdsm-imageio, libnbd reads only (nbd_splice = false)"
        if checkout is not None:
            self.name = BEFORE
            self.label = f"vdsm-imageio of {checkout}"
        # The bench's images and upload targets live outside the daemon's
        # --local directory, which alone is allowed by default.
        self.url_root = url_root
        self._control: ControlClient | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        conf = self.dir / "conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "50-bench.conf").write_text(self._conf())
        log = open(self.dir / "daemon.log", "wb")
        with log:
            return subprocess.Popen(
                [*self._command(), "serve", "--local", str(self.dir), "--port", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _command(self) -> list[str]:
        if self.checkout is None:
            return [str(self.program)]
        # The checkout's package first; -P: without it the working directory
        # (this checkout, when the bench runs from it) would come first.
        python = self.program.with_name("python")
        return ["env", f"PYTHONPATH={self.checkout}", str(python), "-P", "-m", "vdsm_imageio.cli"]

    def _conf(self) -> str:
        http = []
        if self.buffer_size is not None:
            http.append(f"buffer_size = {self.buffer_size}")
        if not self.nbd_splice:
            http.append("nbd_splice = false")
        text = f"[storage]\nurl_roots = {self.url_root}\n"
        return text + ("[http]\n" + "\n".join(http) + "\n" if http else "")

    def settings(self) -> dict[str, Any]:
        cfg = _show_config([*self._command(), "serve", "--local", str(self.dir), "--show-config"])
        http = cfg["http"]
        keys = ("buffer_size", "buffer_pool_bytes", "parallel_reads", "nbd_splice")
        return {f"http.{k}": http[k] for k in keys if k in http}

    def _connect_control(self) -> None:
        # The data listeners may answer a moment before the control socket.
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._control = ControlClient(str(self.dir / "control.sock"), IO_TIMEOUT)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def call(self, method: str, **params: Any) -> Any:
        assert self._control is not None
        reply = self._control.call(method, **params)
        if "error" in reply:
            raise ControlError(f"{method}: {reply['error']}")
        return reply["result"]

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        self.call("Ticket.add", ticket=ticket)

    def remove_ticket(self, ticket_id: str) -> None:
        self.call("Ticket.remove", uuid=ticket_id)


class Theirs(Daemon):
    name = "theirs"
    label = "ovirt-imageio 2.5.1"

    def __init__(self, workdir: Path, *, buffer_size: int | None, program: Path, pki: Path) -> None:
        super().__init__(workdir, buffer_size=buffer_size, ca=pki / "ca.pem")
        self.program = program
        self.pki = pki
        self._control: UnixHTTPConnection | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        conf = self.dir / "conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        log_file = self.dir / "daemon.log"
        # An empty [local] socket makes it bind a random abstract name,
        # which OPTIONS advertises like any other.
        (conf / "50-bench.conf").write_text(f"""\
[daemon]
run_dir = {self.dir / "run"}
drop_privileges = false
systemd_enable = false

[tls]
enable = true
key_file = {self.pki / "server.key"}
cert_file = {self.pki / "server.pem"}
ca_file = {self.pki / "ca.pem"}

[remote]
host = 127.0.0.1
port = {self.port}

[local]
enable = true
socket =

[control]
transport = unix
socket = {self.dir / "control.sock"}

{self._tuned()}
[logger_root]
level = INFO

[handler_logfile]
args = ({str(log_file)!r},)
""")
        (self.dir / "run").mkdir(exist_ok=True)
        log_file.unlink(missing_ok=True)
        err = open(self.dir / "stderr.log", "wb")
        with err:
            return subprocess.Popen(
                [str(self.program), "--conf-dir", str(self.dir)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )

    def _tuned(self) -> str:
        if self.buffer_size is None:
            return ""
        return f"[backend_file]\nbuffer_size = {self.buffer_size}\n"

    def settings(self) -> dict[str, Any]:
        cfg = _show_config([str(self.program), "--conf-dir", str(self.dir), "--show-config"])
        return {
            f"{section}.buffer_size": cfg[section]["buffer_size"]
            for section in ("backend_file", "backend_nbd")
            if "buffer_size" in cfg.get(section, {})
        }

    def _connect_control(self) -> None:
        self._control = UnixHTTPConnection(str(self.dir / "control.sock"), timeout=IO_TIMEOUT)

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> None:
        assert self._control is not None
        self._control.request(method, path, body=body)
        resp = self._control.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise ControlError(f"{method} {path.split('/')[1]}: {resp.status} {data[:200]!r}")

    def add_ticket(self, ticket: dict[str, Any]) -> None:
        self._request("PUT", f"/tickets/{ticket['uuid']}", json.dumps(ticket).encode())

    def remove_ticket(self, ticket_id: str) -> None:
        self._request("DELETE", f"/tickets/{ticket_id}")


class ControlError(Exception):
    pass


def _show_config(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout))
