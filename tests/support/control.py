"""A client of the daemon's control channel: newline-delimited JSON-RPC 2.0
on a unix socket, as vdsm speaks it."""

from __future__ import annotations

import itertools
import json
import socket
import time
from typing import Any


class ControlClient:
    """Newline-delimited JSON-RPC 2.0 on the control socket.

    A reply must be the next line after its request, unless ``events`` is
    set: a subscriber receives notifications at any time and keeps those
    that arrive before a reply in ``notifications``.
    """

    def __init__(self, path: str, timeout: float, *, events: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.reader = self.sock.makefile("rb")
        self.events = events
        self.notifications: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def send_line(self, data: bytes) -> Any:
        """Send one raw line, return the decoded reply line."""
        self.sock.sendall(data + b"\n")
        return json.loads(self._readline())

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """The whole JSON-RPC response object."""
        req_id = next(self._ids)
        request = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            msg = self.read()
            if self.events and "id" not in msg:
                self.notifications.append(msg)
                continue
            assert msg.get("id") == req_id, msg
            return msg

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self._readline()))

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

    def _readline(self) -> bytes:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"control connection closed: {line!r}"
        return line
