"""The /images/<ticket>/extents resource: where the data and holes are.

``context=zero`` lets a client skip holes and zeros (sparse download);
``context=dirty`` lists the blocks changed since a checkpoint (incremental
backup) and needs a ``dirty`` ticket. ``start`` and ``length`` restrict the
answer to part of the image, so a client of a huge sparse image can page.
"""

from __future__ import annotations

import logging
import re

from .. import ops
from ..errors import BadRequest, NotFound, RangeNotSatisfiable
from ..registry import Registry
from ..tickets import Kind
from .exchange import Exchange
from .message import Request
from .ranges import MAX_SIZE, check_within

log = logging.getLogger(__name__)

CONTEXTS = ("zero", "dirty")
_DIGITS = re.compile(r"[0-9]{1,19}")


class Extents:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def get(self, ex: Exchange, ticket_id: str) -> None:
        req = ex.request
        context = req.query.get("context", "zero")
        if context not in CONTEXTS:
            raise BadRequest(field="context", reason=f"expected zero or dirty, got {context!r}")
        ticket = self._registry.authorize(ticket_id, "read")
        handles = ex.link.bind(ticket, Kind.PEEK)
        if context == "dirty" and not ticket.spec.dirty:
            raise NotFound(reason="The ticket does not support dirty extents")
        size = ticket.spec.size
        start = _query_int(req, "start", 0)
        length = _query_int(req, "length", size - start if start < size else 0)
        if start > size or (start == size and size > 0):
            raise RangeNotSatisfiable(size=size)
        check_within(start, length, size)
        backend = handles.backend
        log.info(
            "EXTENTS transfer=%s context=%s start=%d length=%d",
            ticket.transfer_id,
            context,
            start,
            length,
        )
        extents = ticket.run(
            ops.Extents(backend=backend, context=context, start=start, span=length)
        )
        ex.response.reply_json([e.to_json() for e in extents])


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
