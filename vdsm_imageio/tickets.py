"""Ticket lifecycle and the registry of live tickets.

Rules:
- A ticket is *live* from ``add`` until ``remove`` succeeds; it is then
  *canceled* while its running requests drain, and gone once they have.
- Expiry slides: a ticket expires ``timeout`` seconds after its last
  activity (add, extend, the start or end of a request, an authorized
  request). While a request runs the ticket never expires. ``extend``
  sets a new timeout and counts as activity, also on an expired ticket.
- ``idle_time`` counts from the last use by a client (add, the start or end
  of a request, an authorized request), not from ``extend``: the engine
  extends while it waits for a paused client and must still see the pause.
- An expired or canceled ticket authorizes nothing; it stays listed until
  removed (vdsm removes what it added).
- ``transferred`` is the size of the union of the byte ranges that finished
  requests moved and that running requests have moved so far.
- Canceling aborts every connection attached to the ticket, so a request
  blocked on a slow peer stops at once instead of at its next chunk;
  ``remove`` then waits up to ``remove_timeout`` for requests to end and
  raises TicketBusy otherwise (the caller retries, as the engine does).
- A connection is attached as a reader or a writer; the counts are bounded
  by ``max_readers`` and ``max_writers``. A reader that writes becomes a
  writer.
- An injected guard (the ``before_*`` hooks) may veto ``add`` and the first
  ``remove``: a vetoed add leaves no ticket, a vetoed remove leaves the
  ticket live and not canceled.
- Time comes from an injected monotonic clock.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from . import ticketspec
from .errors import (
    Forbidden,
    InvalidTicket,
    TicketBusy,
    TicketCanceled,
    TicketConflict,
    TicketNotFound,
    TooManyConnections,
)
from .measure import RangeSet
from .ticketspec import TicketSpec

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Listener = Callable[[str, "Ticket"], None]
# Called with "add" or "remove" before the registry changes; raising vetoes.
Guard = Callable[[str, "Ticket"], None]


# Connection kinds, weakest first: a connection only ever moves up.
_RANK = {"peek": 0, "read": 1, "write": 2}


class Attachment(Protocol):
    """A connection as the ticket sees it: something it can abort."""

    def abort(self) -> None: ...


@dataclass
class Operation:
    start: int
    length: int
    done: int = 0


@dataclass(frozen=True)
class Status:
    uuid: str
    transfer_id: str
    size: int
    ops: list[str]
    timeout: int
    expires_in: int
    inactivity_timeout: int
    idle_time: int
    active: bool
    connections: int
    transferred: int
    canceled: bool
    sparse: bool
    dirty: bool
    filename: str | None
    url: str | None
    volume: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("url", "volume", "filename"):
            if d[key] is None:
                del d[key]
        return d


class Ticket:
    def __init__(self, spec: TicketSpec, clock: Clock, url: str) -> None:
        self.spec = spec
        self.url = url
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._timeout = spec.timeout
        self._activity = clock()
        self._used = self._activity
        self.created = self._activity
        self._ops: dict[int, Operation] = {}
        self._op_ids = itertools.count()
        self._completed = RangeSet()
        self._canceled = False
        self._attached: dict[Attachment, str] = {}

    @property
    def transfer_id(self) -> str:
        return self.spec.transfer_id

    @property
    def canceled(self) -> bool:
        return self._canceled

    # Requests.

    def touch(self) -> None:
        with self._cond:
            self._activity = self._used = self._clock()

    @contextmanager
    def operation(self, start: int, length: int) -> Iterator[Operation]:
        op = Operation(start, length)
        with self._cond:
            self._check_canceled()
            key = next(self._op_ids)
            self._ops[key] = op
            self._activity = self._used = self._clock()
        try:
            yield op
        finally:
            with self._cond:
                del self._ops[key]
                self._completed.add(op.start, op.start + op.done)
                self._activity = self._used = self._clock()
                self._cond.notify_all()

    def progress(self, op: Operation, n: int) -> None:
        """Account n more bytes of op; stop the request if canceled."""
        op.done += n
        if self._canceled:
            raise TicketCanceled(transfer_id=self.transfer_id)

    def check_canceled(self) -> None:
        if self._canceled:
            raise TicketCanceled(transfer_id=self.transfer_id)

    _check_canceled = check_canceled

    # Connections.

    def attach(self, conn: Attachment, kind: str, limit: int) -> None:
        """Attach conn as kind, or upgrade it (peek < read < write).

        A "peek" connection (OPTIONS, extents) is counted and aborted on
        cancel like the others but takes no reader or writer slot.
        """
        with self._cond:
            self._check_canceled()
            current = self._attached.get(conn)
            if current is not None and _RANK[current] >= _RANK[kind]:
                return
            if kind == "peek":
                self._attached[conn] = kind
                return
            count = sum(1 for k in self._attached.values() if k == kind)
            if count >= limit:
                raise TooManyConnections(
                    kind="writer" if kind == "write" else "reader",
                    transfer_id=self.transfer_id,
                    limit=limit,
                )
            self._attached[conn] = kind

    def detach(self, conn: Attachment) -> None:
        with self._cond:
            self._attached.pop(conn, None)

    # Lifecycle.

    def extend(self, timeout: int) -> None:
        with self._cond:
            self._timeout = timeout
            self._activity = self._clock()

    def cancel(self) -> None:
        with self._cond:
            self._canceled = True
            conns = list(self._attached)
        for conn in conns:
            conn.abort()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._ops, timeout)

    def running(self) -> int:
        with self._cond:
            return len(self._ops)

    def expired(self) -> bool:
        with self._cond:
            return not self._ops and self._clock() >= self._activity + self._timeout

    def idle_since(self) -> float | None:
        """Clock time of the last use by a client, None while a request runs.

        The monitor needs the exact start of an idle period (status() shows
        whole seconds) to report inactivity once per period.
        """
        with self._cond:
            return None if self._ops else self._used

    def expires_at(self) -> float | None:
        """Clock time the ticket expires at, None while a request runs."""
        with self._cond:
            return None if self._ops else self._activity + self._timeout

    def authorize(self, op: str) -> None:
        self.check_canceled()
        if not self.spec.allows(op):
            raise Forbidden(reason=f"Transfer {self.transfer_id} does not allow {op}")
        if self.expired():
            raise Forbidden(reason=f"Transfer {self.transfer_id} has expired")

    def status(self) -> Status:
        with self._cond:
            now = self._clock()
            active = bool(self._ops)
            ranges = self._completed.copy()
            for op in self._ops.values():
                ranges.add(op.start, op.start + op.done)
            idle = 0 if active else int(now - self._used)
            left = self._timeout if active else math.floor(self._activity + self._timeout - now)
            spec = self.spec
            return Status(
                uuid=spec.uuid,
                transfer_id=spec.transfer_id,
                size=spec.size,
                ops=list(spec.ops),
                timeout=self._timeout,
                expires_in=left,
                inactivity_timeout=spec.inactivity_timeout,
                idle_time=idle,
                active=active,
                connections=len(self._attached),
                transferred=ranges.total(),
                canceled=self._canceled,
                sparse=spec.sparse,
                dirty=spec.dirty,
                filename=spec.filename,
                url=spec.url,
                volume=spec.raw_volume,
            )


class Registry:
    """The live tickets, keyed by their secret uuid."""

    def __init__(
        self,
        *,
        clock: Clock,
        remove_timeout: float,
        default_inactivity_timeout: int,
        resolve_url: Callable[[TicketSpec], str] | None = None,
        release: Callable[[TicketSpec], None] | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._clock = clock
        self._remove_timeout = remove_timeout
        self._default_inactivity = default_inactivity_timeout
        self._resolve_url = resolve_url or _url_only
        self._release = release or (lambda spec: None)
        self._guard = guard or (lambda action, ticket: None)
        self._lock = threading.Lock()
        self._tickets: dict[str, Ticket] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _emit(self, event: str, ticket: Ticket) -> None:
        for listener in self._listeners:
            try:
                listener(event, ticket)
            except Exception:
                log.exception("LISTENER failed event=%s transfer=%s", event, ticket.transfer_id)

    def parse(self, obj: object) -> TicketSpec:
        return ticketspec.parse(obj, default_inactivity_timeout=self._default_inactivity)

    def add(self, obj: object) -> Ticket:
        spec = self.parse(obj)
        with self._lock:
            existing = self._tickets.get(spec.uuid)
        if existing is not None:
            diff = existing.spec.first_difference(spec)
            if diff is not None or existing.canceled:
                raise TicketConflict(uuid=spec.uuid, field=diff or "canceled")
            return existing
        # Vetoed before storage is prepared: a refused ticket costs nothing.
        self._guard("add", Ticket(spec, self._clock, spec.url or ""))
        url = self._resolve_url(spec)
        ticket = Ticket(spec, self._clock, url)
        with self._lock:
            raced = self._tickets.setdefault(spec.uuid, ticket)
        if raced is not ticket:
            self._release(spec)
            if raced.spec.first_difference(spec) is not None:
                raise TicketConflict(uuid=spec.uuid, field="uuid")
            return raced
        log.info(
            "ADD transfer=%s size=%d ops=%s timeout=%d url=%s",
            spec.transfer_id,
            spec.size,
            ",".join(spec.ops),
            spec.timeout,
            _loggable(url),
        )
        self._emit("added", ticket)
        return ticket

    def get(self, uuid: str) -> Ticket:
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            raise TicketNotFound(uuid=uuid)
        return ticket

    def list(self) -> list[Ticket]:
        with self._lock:
            return list(self._tickets.values())

    def extend(self, uuid: str, timeout: int) -> Ticket:
        ticket = self.get(uuid)
        ticket.extend(timeout)
        log.info("EXTEND transfer=%s timeout=%d", ticket.transfer_id, timeout)
        return ticket

    def remove(self, uuid: str) -> None:
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            return
        if not ticket.canceled:
            # Once canceled, the removal was agreed: a retry is not vetoed.
            self._guard("remove", ticket)
            log.info("CANCEL transfer=%s running=%d", ticket.transfer_id, ticket.running())
            ticket.cancel()
            self._emit("canceled", ticket)
        if not ticket.wait_idle(self._remove_timeout):
            raise TicketBusy(uuid=uuid, running=ticket.running(), timeout=self._remove_timeout)
        with self._lock:
            if self._tickets.get(uuid) is not ticket:
                return
            del self._tickets[uuid]
        try:
            self._release(ticket.spec)
        finally:
            log.info("REMOVE transfer=%s", ticket.transfer_id)
            self._emit("removed", ticket)

    def authorize(self, uuid: str, op: str) -> Ticket:
        with self._lock:
            ticket = self._tickets.get(uuid)
        if ticket is None:
            raise Forbidden(reason="No such ticket")
        ticket.authorize(op)
        return ticket

    def cancel_all(self) -> None:
        for ticket in self.list():
            ticket.cancel()


def _url_only(spec: TicketSpec) -> str:
    if spec.url is None:
        raise InvalidTicket(field="volume", reason="volume tickets need the storage plane")
    return spec.url


def _loggable(url: str) -> str:
    # An https URL of a proxied ticket ends with the remote ticket id.
    return url.rsplit("/", 1)[0] + "/..." if url.startswith("https:") else url
