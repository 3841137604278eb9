"""The real daemon in the VM lane guest, and the clients that drive it.

``vdsm-imageio serve --local DIR`` runs as root next to LVM, udevd and
sanlock. It starts once per guest session (a Python start costs seconds
in the emulated guest); tests speak to it only as vdsm and clients do:
JSON-RPC lines on the control socket, HTTP on its abstract unix socket,
and HTTPS with the CA it generated.
"""

from __future__ import annotations

import http.client
import itertools
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Imports and key generation in an emulated CPU on a 9p root.
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
# LVM commands take seconds in the guest; Ticket.add and remove run them.
IO_TIMEOUT = 120.0


class ControlClient:
    """Newline-delimited JSON-RPC 2.0 on the control socket."""

    def __init__(self, path: str, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self._ids = itertools.count(1)
        # Notifications that arrived while waiting for a reply.
        self.notifications: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        req_id = next(self._ids)
        self.sock.sendall(
            json.dumps(
                {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
            ).encode()
            + b"\n"
        )
        while True:
            msg = self.read()
            if "id" in msg:
                assert msg["id"] == req_id, msg
                return msg
            self.notifications.append(msg)

    def read(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"control connection closed: {line!r}"
        return dict(json.loads(line))

    def wait_for(self, method: str, deadline: float, **match: Any) -> dict[str, Any]:
        """The first notification method whose params include match."""
        while True:
            while self.notifications:
                msg = self.notifications.pop(0)
                params = msg.get("params", {})
                if msg.get("method") == method and all(
                    params.get(k) == v for k, v in match.items()
                ):
                    return msg
            left = deadline - time.monotonic()
            assert left > 0, f"no {method} {match} before the deadline"
            self.sock.settimeout(left)
            self.notifications.append(self.read())

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


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


class Daemon:
    def __init__(self, directory: Path, conf: str) -> None:
        self.dir = directory
        self.control_path = str(directory / "control.sock")
        self.run_dir = directory / "run"
        self.log_path = directory / "daemon.log"
        (directory / "conf.d").mkdir(parents=True, exist_ok=True)
        (directory / "conf.d" / "50-vm.conf").write_text(conf)
        self._log = open(self.log_path, "wb")  # owned until stop()
        self.proc = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "vdsm-imageio"),
                "serve",
                "--local",
                str(directory),
                "--port",
                "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self.port = 0
        try:
            self._wait_ready()
            self.control = ControlClient(self.control_path)
            self.unix_socket = str(self.result("Service.info")["unix_socket"])
        except BaseException:
            self.stop()
            raise
        self.ssl_context = ssl.create_default_context(cafile=str(directory / "pki" / "ca.pem"))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if line.startswith("ready data="):
                    url = line.split()[1].removeprefix("data=")
                    self.port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.2)
        raise RuntimeError(f"daemon not ready in {READY_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # Control channel.

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.control.call(method, **params)

    def result(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "error" not in reply, f"{reply}\n--- daemon log ---\n{self.log_tail()}"
        return reply["result"]

    def subscribe(self, events: list[str]) -> ControlClient:
        """A second control connection that receives events."""
        sub = ControlClient(self.control_path)
        reply = sub.call("Events.subscribe", events=events)
        assert reply.get("result") is True, reply
        return sub

    # Data path.

    def unix(self, timeout: float = IO_TIMEOUT) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.unix_socket, timeout=timeout)

    def https(self, timeout: float = IO_TIMEOUT) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=self.ssl_context
        )

    # Lifecycle.

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the exit status, None if killed."""
        control = getattr(self, "control", None)
        if control is not None:
            control.close()
        status: int | None = self.proc.poll()
        if status is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                status = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                status = None
        self._log.close()
        return status
