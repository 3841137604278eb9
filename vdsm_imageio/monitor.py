"""The data plane's event source: progress, inactivity, expiry, removal.

Theory of operation: nothing here runs in the I/O path. A thread calls
``Monitor.tick(now)`` every ``TICK`` seconds; the tick compares each live
ticket with what it saw last and returns the events to publish, so a
transfer pays one status snapshot per tick whatever its speed. Removals
come from the registry's listener instead of from comparing lists, so a
ticket added and removed between two ticks still gets its ``Ticket.removed``.

Rules:
- ``Ticket.progress`` {uuid, transfer_id, transferred, size, active}: while
  a ticket moves (``transferred`` changed), at most once per
  ``progress_interval``; one final one with ``active`` false when it goes
  idle after moving (also when a whole request ran between two ticks), and
  before ``Ticket.removed`` when bytes moved since the last one.
- ``Ticket.inactive`` {uuid, idle_time}: once per idle period, when
  ``idle_time`` (whole seconds, as ``Ticket.status`` shows it) passes
  ``inactivity_timeout``; never when that is 0. Any activity starts a new
  period.
- ``Ticket.expired`` {uuid, transfer_id}: once per expiry; ``extend`` or
  any use starts a new one.
- ``Ticket.removed`` {uuid, transfer_id}: once, after the ticket's last
  progress.
- A canceled ticket (a removal in progress) reports progress only.
- With ``expired_ticket_grace`` > 0, a ticket expired for longer than the
  grace is removed (its ``Ticket.removed`` follows in the same tick); 0
  keeps expired tickets until vdsm removes them, as vdsm expects.

Events carry the ticket uuid because their subscribers (vdsm) know tickets
by it; logs carry the transfer id only.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ImageioError
from .registry import Registry
from .tickets import Clock, Status, Ticket

log = logging.getLogger(__name__)

PROGRESS = "Ticket.progress"
INACTIVE = "Ticket.inactive"
EXPIRED = "Ticket.expired"
REMOVED = "Ticket.removed"

# How often the thread ticks: the latency of every event, and the
# resolution of progress_interval.
TICK = 0.2
JOIN_TIMEOUT = 5.0

Publish = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Event:
    name: str
    params: dict[str, Any]


@dataclass
class _Seen:
    """What subscribers last heard about one ticket."""

    transferred: int = 0
    active: bool = False
    sent_at: float = -math.inf
    # The idle period (its start) already reported inactive, and the
    # expiry (its time) already reported expired.
    inactive_period: float | None = None
    expired_at: float | None = None


class Monitor:
    def __init__(
        self,
        registry: Registry,
        *,
        clock: Clock,
        progress_interval: float,
        expired_ticket_grace: float = 0.0,
    ) -> None:
        self.clock = clock
        self._registry = registry
        self._interval = progress_interval
        self._grace = expired_ticket_grace
        self._seen: dict[Ticket, _Seen] = {}
        self._lock = threading.Lock()
        self._removed: list[Ticket] = []
        registry.subscribe(self._on_registry)

    def _on_registry(self, event: str, ticket: Ticket) -> None:
        # Called in Registry.remove: only note it, the next tick reports.
        if event == "removed":
            with self._lock:
                self._removed.append(ticket)

    def tick(self, now: float) -> list[Event]:
        """The events since the last tick, in the order to publish them."""
        events: list[Event] = []
        overdue: list[Ticket] = []
        for ticket in self._registry.list():
            events.extend(self._check(ticket, now, overdue))
        for ticket in overdue:
            self._reap(ticket)
        with self._lock:
            removed, self._removed = self._removed, []
        for ticket in removed:
            events.extend(self._gone(ticket))
        return events

    def _check(self, ticket: Ticket, now: float, overdue: list[Ticket]) -> list[Event]:
        status = ticket.status()
        since = ticket.idle_since()
        expires = ticket.expires_at()
        seen = self._seen.setdefault(ticket, _Seen())
        events: list[Event] = []
        moved = status.transferred != seen.transferred
        if status.active:
            if moved and now - seen.sent_at >= self._interval:
                events.append(self._progress(seen, status, now, active=True))
            return events
        if moved or seen.active:
            events.append(self._progress(seen, status, now, active=False))
        if since is None or expires is None or status.canceled:
            # A request started after the snapshot, or a removal is under way.
            return events
        idle = now - since
        limit = status.inactivity_timeout
        if limit and int(idle) > limit and seen.inactive_period != since:
            seen.inactive_period = since
            log.info(
                "INACTIVE transfer=%s idle_time=%d inactivity_timeout=%d",
                status.transfer_id,
                int(idle),
                limit,
            )
            events.append(Event(INACTIVE, {"uuid": status.uuid, "idle_time": int(idle)}))
        if now >= expires and seen.expired_at != expires:
            seen.expired_at = expires
            log.info("EXPIRED transfer=%s timeout=%d", status.transfer_id, status.timeout)
            events.append(Event(EXPIRED, _ident(status)))
        if self._grace > 0 and now - expires > self._grace:
            overdue.append(ticket)
        return events

    def _progress(self, seen: _Seen, status: Status, now: float, *, active: bool) -> Event:
        seen.transferred = status.transferred
        seen.active = active
        seen.sent_at = now
        return Event(
            PROGRESS,
            {
                "uuid": status.uuid,
                "transfer_id": status.transfer_id,
                "transferred": status.transferred,
                "size": status.size,
                "active": active,
            },
        )

    def _gone(self, ticket: Ticket) -> list[Event]:
        seen = self._seen.pop(ticket, None) or _Seen()
        status = ticket.status()
        events = []
        if status.transferred != seen.transferred or seen.active:
            events.append(self._progress(seen, status, 0.0, active=False))
        events.append(Event(REMOVED, _ident(status)))
        return events

    def _reap(self, ticket: Ticket) -> None:
        log.info("REAP transfer=%s grace=%s", ticket.transfer_id, self._grace)
        try:
            self._registry.remove(ticket.spec.uuid)
        except ImageioError as e:
            # TicketBusy: a request raced in; the next tick tries again.
            log.warning("REAP failed transfer=%s error=%s", ticket.transfer_id, type(e).__name__)


class MonitorThread:
    """Ticks the monitor every ``period`` seconds and publishes its events."""

    def __init__(self, monitor: Monitor, publish: Publish, *, period: float = TICK) -> None:
        self._monitor = monitor
        self._publish = publish
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(JOIN_TIMEOUT)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                events = self._monitor.tick(self._monitor.clock())
            except Exception:
                log.exception("TICK failed")
                continue
            for event in events:
                try:
                    self._publish(event.name, event.params)
                except Exception:
                    log.exception("PUBLISH failed event=%s", event.name)


def _ident(status: Status) -> dict[str, Any]:
    return {"uuid": status.uuid, "transfer_id": status.transfer_id}
