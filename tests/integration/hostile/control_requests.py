"""The lines the control corpus sends, and the record of what each case expects.

A case is one line (or a callable that builds it from the world's ticket
ids and images) and the reply it must get: one error code, a batch's codes,
or no reply at all. The codes are the channel's own and vdsm's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.integration.hostile.control_support import World

PARSE = -32700
INVALID_REQUEST = -32600
NO_METHOD = -32601
INVALID_PARAMS = -32602
NOT_FOUND = 100
CONFLICT = 101
# vdsm's ImageDaemonError: what the Host verbs answer, as vdsm does.
IMAGE_DAEMON_ERROR = 482
OK = 0  # a result, not an error
MAX_LINE = 1024**2
MAX_BATCH = 100
MAX_DEPTH = 64


@dataclass(frozen=True)
class Case:
    name: str
    # The bytes to send; a callable gets the world (ticket ids, images).
    line: bytes | Any
    # One reply: its error code (OK for a result). A list: a batch reply,
    # one outcome per member. None: no reply at all.
    expect: int | list[int] | None
    field: str | None = None  # data.field of a -32602
    mentions: str | None = None  # in the error message (vdsm's errors have no data)

    def data(self, world: World) -> bytes:
        line = self.line(world) if callable(self.line) else self.line
        return line if line.endswith(b"\n") else line + b"\n"


def req(method: str, params: Any = None, ident: Any = 1, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": ident, **extra}
    if params is not None:
        r["params"] = params
    return r


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def add(**change: Any) -> Any:
    """Ticket.add of a new ticket with some fields changed."""
    return lambda w: line(req("Ticket.add", {"ticket": w.new_ticket(**change)}))


def add_raw(field: str, text: str) -> Any:
    """Ticket.add with one field's JSON text as given (not valid JSON)."""

    def build(w: World) -> bytes:
        ticket = json.dumps(w.new_ticket(**{field: "@@"}))
        return line(req("Ticket.add", {"ticket": "@@TICKET"})).replace(
            b'"@@TICKET"', ticket.replace('"@@"', text).encode()
        )

    return build


def add_volume(**volume: Any) -> Any:
    base = {"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}

    def build(w: World) -> bytes:
        ticket = w.new_ticket(volume={**base, **volume})
        del ticket["url"]
        return line(req("Ticket.add", {"ticket": ticket}))

    return build


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()
