"""Ticket lifecycle: one ticket's state, requests and connections.

Rules:
- A ticket is *live* from its addition until its removal is agreed; it is
  then *canceled* while its running requests drain, and gone once they
  have (``vdsm_imageio.registry`` owns the table of tickets).
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
  blocked on a slow peer stops at once instead of at its next chunk.
- A connection is attached as a reader or a writer; the counts are bounded
  by ``max_readers`` and ``max_writers``. A reader that writes becomes a
  writer.
- Time comes from an injected monotonic clock.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from .errors import Forbidden, TicketCanceled, TooManyConnections
from .measure import RangeSet
from .ticketspec import TicketSpec

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Kind(enum.Enum):
    """How a connection uses its ticket, weakest first: a connection only
    ever moves up. A peek (OPTIONS, extents) is counted and aborted on
    cancel like the others but takes no reader or writer slot: ovirt-imageio's
    client keeps the connection it used for those open beside max_readers
    data connections."""

    PEEK = 0
    READ = 1
    WRITE = 2


class Attachment(Protocol):
    """A connection as the ticket sees it: something it can abort."""

    def abort(self) -> None: ...


@dataclass
class Operation:
    start: int
    length: int
    done: int = 0


class Runnable(Protocol[T_co]):
    """A request's work on the ticket's storage (``vdsm_imageio.ops``)."""

    @property
    def start(self) -> int:
        """Offset of the first byte it moves."""

    @property
    def length(self) -> int:
        """Bytes it moves at most."""

    def run(self, progress: Callable[[int], None]) -> T_co:
        """Do the work, calling progress with the bytes moved since the last call."""


@dataclass(frozen=True)
class Status:
    uuid: str
    transfer_id: str
    size: int
    ops: list[str]
    timeout: int
    # Seconds left, and the monotonic clock's second at which the ticket
    # expires (ovirt-imageio's "expires"; also while active, as if the
    # running requests ended now).
    expires_in: int
    expires: int
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
        self._attached: dict[Attachment, Kind] = {}

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
            self.check_canceled()
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

    def run(self, work: Runnable[T]) -> T:
        """Run work as a request of this ticket: its bytes count in
        transferred, and a cancel stops it at its next piece."""
        with self.operation(work.start, work.length) as op:
            return work.run(partial(self.progress, op))

    def progress(self, op: Operation, n: int) -> None:
        """Account n more bytes of op; stop the request if canceled."""
        op.done += n
        if self._canceled:
            raise TicketCanceled(transfer_id=self.transfer_id)

    def check_canceled(self) -> None:
        if self._canceled:
            raise TicketCanceled(transfer_id=self.transfer_id)

    # Connections.

    def attach(self, conn: Attachment, kind: Kind, limit: int) -> None:
        """Attach conn as kind, or upgrade it (peek < read < write); limit
        bounds the readers or writers (a peek takes no slot)."""
        with self._cond:
            self.check_canceled()
            current = self._attached.get(conn)
            if current is not None and current.value >= kind.value:
                return
            if kind is Kind.PEEK:
                self._attached[conn] = kind
                return
            count = sum(1 for k in self._attached.values() if k is kind)
            if count >= limit:
                raise TooManyConnections(
                    kind="writer" if kind is Kind.WRITE else "reader",
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
            expires = math.floor(now if active else self._activity) + self._timeout
            spec = self.spec
            return Status(
                uuid=spec.uuid,
                transfer_id=spec.transfer_id,
                size=spec.size,
                ops=list(spec.ops),
                timeout=self._timeout,
                expires_in=left,
                expires=expires,
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
