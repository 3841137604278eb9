"""The /images/<ticket>/extents resource: where the data and holes are.

``context=zero`` lets a client skip holes and zeros (sparse download);
``context=dirty`` lists the blocks changed since a checkpoint (incremental
backup) and needs a ``dirty`` ticket. ``start`` and ``length`` restrict the
answer to part of the image, so a client of a huge sparse image can page.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from ..backends import DirtyExtent, ZeroExtent
from ..errors import BadRequest, NotFound, RangeNotSatisfiable
from ..registry import Registry
from ..tickets import Kind
from .message import Request
from .ranges import MAX_SIZE, check_within

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)

CONTEXTS = ("zero", "dirty")
_DIGITS = re.compile(r"[0-9]{1,19}")


class Extents:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def get(self, conn: Connection, req: Request, ticket_id: str) -> None:
        context = req.query.get("context", "zero")
        if context not in CONTEXTS:
            raise BadRequest(field="context", reason=f"expected zero or dirty, got {context!r}")
        ticket = self._registry.authorize(ticket_id, "read")
        conn.bind(ticket, Kind.PEEK)
        if context == "dirty" and not ticket.spec.dirty:
            raise NotFound(reason="The ticket does not support dirty extents")
        size = ticket.spec.size
        start = _query_int(req, "start", 0)
        length = _query_int(req, "length", size - start if start < size else 0)
        if start > size or (start == size and size > 0):
            raise RangeNotSatisfiable(size=size)
        check_within(start, length, size)
        backend = conn.backend(ticket)
        log.info(
            "EXTENTS transfer=%s context=%s start=%d length=%d",
            ticket.transfer_id,
            context,
            start,
            length,
        )
        with ticket.operation(start, 0):
            extents = list(backend.extents(context, start, length))
            # A file shorter than the ticket reads as zeros past its end.
            # Where the extents stop, not the size now: a writer may have
            # grown or cut the file since they were found.
            covered = extents[-1].start + extents[-1].length if extents else start
            end = start + length
            if context == "zero" and covered < end:
                _append_hole(extents, covered, end)
        conn.reply_json([e.to_json() for e in extents])


def _append_hole(extents: list[ZeroExtent | DirtyExtent], start: int, end: int) -> None:
    # One hole, not two: a client counts requests by extents.
    last = extents[-1] if extents else None
    if isinstance(last, ZeroExtent) and last.hole and last.start + last.length == start:
        extents[-1] = ZeroExtent(last.start, end - last.start, zero=True, hole=True)
    else:
        extents.append(ZeroExtent(start, end - start, zero=True, hole=True))


def _query_int(req: Request, name: str, default: int) -> int:
    value = req.query.get(name)
    if value is None:
        return default
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses,
    # and int() refuses more than 4300 digits; no image needs 20.
    if not _DIGITS.fullmatch(value) or int(value) > MAX_SIZE:
        shown = value if len(value) <= 24 else value[:24] + "..."
        raise BadRequest(
            field=f"query parameter {name!r}",
            reason=f"expected an integer from 0 to {MAX_SIZE}, got {shown!r}",
        )
    return int(value)
