"""A raw control-channel client (lines out, lines in), the service info the
test servers answer with, and the ticket they are given."""

from __future__ import annotations

import json
import socket
from typing import Any

from tests.support.tickets import valid_ticket
from verbs.service import ServiceInfo

IO_TIMEOUT = 10.0


class Client:
    """A raw control-channel client: lines out, lines in."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.next_id = 0

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.sock.sendall(data + b"\n")

    def recv(self) -> Any:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        return json.loads(line)

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        self.send(
            json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        )
        reply = self.recv()
        assert reply["id"] == self.next_id
        return reply

    def result(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "result" not in reply, reply
        return reply["error"]

    def at_eof(self) -> bool:
        return self.reader.readline() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


INFO = ServiceInfo(
    version="0.1.0",
    features=["extents"],
    data_url="https://x/images/",
    unix_socket=None,
    uptime=5,
    tickets=0,
    connections=0,
)


def ticket(**kw: Any) -> dict[str, Any]:
    return valid_ticket(
        **{
            "uuid": "secret-1",
            "size": 4096,
            "ops": ["read", "write"],
            "url": "file:///var/tmp/disk.raw",
            "transfer_id": "tx-1",
            "engine_extra": {"ignored": True},
            **kw,
        }
    )
