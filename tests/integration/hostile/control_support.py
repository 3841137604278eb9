"""Helpers of the control-side hostile corpus (JSON-RPC and the ticket API).

Every case runs against one real daemon per module and is judged the same
way: the reply (error code or status), whether the connection stays open,
and then the daemon itself: still running, no traceback in its log, the
tickets exactly as they were, and the images of a writable ticket, of a
read-only ticket and of an unrelated file byte for byte unchanged.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

IO_TIMEOUT = 10.0
IMAGE_SIZE = 1024**2
# Status fields that only a request may change (not the clock).
STABLE_STATUS = (
    "uuid",
    "transfer_id",
    "size",
    "ops",
    "timeout",
    "inactivity_timeout",
    "canceled",
    "sparse",
    "dirty",
    "filename",
    "url",
    "volume",
)
# (name, value) of ticket timeouts both control channels refuse: not an
# integer of seconds, or out of range.
BAD_TIMEOUTS: list[tuple[str, Any]] = [
    ("float", 1.5),
    ("string", "300"),
    ("true", True),
    ("null", None),
    ("list", [300]),
    ("object", {"s": 300}),
    ("negative", -1),
    ("2**31", 2**31),
    ("2**64", 2**64),
    ("10**4000", 10**4000),
]


class LineClient:
    """Raw newline-delimited JSON-RPC on the control socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Any:
        """The next reply line decoded, None if the daemon closed."""
        line = self.reader.readline()
        if not line.endswith(b"\n"):
            return None
        return json.loads(line)

    def probe(self) -> bool:
        """True if the connection still answers, in order, a Ticket.list."""
        try:
            self.send(b'{"jsonrpc": "2.0", "id": "probe", "method": "Ticket.list"}\n')
            reply = self.recv()
        except OSError:
            return False
        return reply is not None and reply.get("id") == "probe" and "result" in reply

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def call(daemon: Daemon, method: str, **params: Any) -> Any:
    """One request on a connection of its own; the result."""
    c = LineClient(daemon.control_path)
    try:
        line = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        c.send(json.dumps(line).encode() + b"\n")
        reply = c.recv()
    finally:
        c.close()
    assert reply is not None and "result" in reply, reply
    return reply["result"]


def tickets(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """What a request may change of every ticket, by uuid."""
    return {
        status["uuid"]: {k: status.get(k) for k in STABLE_STATUS}
        for status in call(daemon, "Ticket.list")
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class World:
    """A daemon's tickets and files that no refused request may touch."""

    daemon: Daemon
    writable: str
    writable_image: Path
    readonly: str
    readonly_image: Path
    unrelated: Path
    # An image no ticket uses yet, for tickets that must not be added.
    spare_image: Path

    def files(self) -> list[Path]:
        return [self.writable_image, self.readonly_image, self.unrelated, self.spare_image]

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        return tickets(self.daemon), [digest(p) for p in self.files()]

    def new_ticket(self, **change: Any) -> dict[str, Any]:
        """A valid ticket for a new uuid on the spare image, then changed."""
        ticket = {
            "uuid": str(uuidlib.uuid4()),
            "size": IMAGE_SIZE,
            "ops": ["write"],
            "timeout": 300,
            "inactivity_timeout": 60,
            "url": self.spare_image.as_uri(),
            "transfer_id": "corpus-new",
            "sparse": True,
            "dirty": False,
        }
        ticket.update(change)
        return ticket


def make_world(daemon: Daemon) -> World:
    writable, writable_image = daemon.add_ticket(
        size=IMAGE_SIZE, data=b"writable" * 1000, transfer_id="corpus-rw"
    )
    readonly, readonly_image = daemon.add_ticket(
        size=IMAGE_SIZE, ops=("read",), data=b"readonly" * 1000, transfer_id="corpus-ro"
    )
    unrelated = daemon.images / "unrelated.raw"
    unrelated.write_bytes(b"unrelated" * 1000)
    spare = daemon.images / "spare.raw"
    spare.write_bytes(b"spare" * 1000)
    return World(
        daemon=daemon,
        writable=writable,
        writable_image=writable_image,
        readonly=readonly,
        readonly_image=readonly_image,
        unrelated=unrelated,
        spare_image=spare,
    )


def log_mark(daemon: Daemon) -> int:
    """Where the daemon's log ends now: a case judges only what it caused."""
    return daemon.log_path.stat().st_size


def assert_daemon_healthy(daemon: Daemon, since: int = 0) -> None:
    assert daemon.proc.poll() is None, f"daemon exited with {daemon.proc.returncode}"
    with open(daemon.log_path, "rb") as f:
        f.seek(since)
        log = f.read().decode(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    # -32603 and 500 say "see the log": an unexpected error, even if handled.
    assert "FAILED verb=" not in log, log[-4000:]
    assert "status=500" not in log, log[-4000:]
