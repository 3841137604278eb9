"""The ``Events`` namespace: notifications pushed to subscribed connections.

Theory of operation: ``EventHub.publish`` (called by the data plane's
monitor thread and the storage plane's device watcher) encodes a
notification once and offers the line to every subscriber that wants it.
Each subscriber has a bounded queue and a sender thread of its own, so a
peer that reads slowly, or not at all, costs only its own notifications:
publish never blocks, never raises, and never waits for a socket.

Rules:
- A full queue drops the notification; the first drop of a run is logged,
  and the count when the queue takes notifications again.
- A subscription ends when its connection closes (``Connection.on_close``)
  or the hub stops. A peer that stops reading is dropped by the connection
  after its send timeout, which ends the subscription too.
- ``Events.subscribe`` again on the same connection replaces its filter.
- Notifications may reach a client before the reply to its
  ``Events.subscribe``: clients tell them apart by the missing ``id``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from vdsm_imageio import monitor
from vdsm_imageio.errors import InvalidParam
from vdsm_imageio.ticketspec import show

from . import params, protocol
from .connection import Connection
from .errors import Method, verb

log = logging.getLogger(__name__)

VOLUME_LOST = "Volume.lost"
# Every event a client may subscribe to, in the order --help lists them.
EVENTS = (monitor.PROGRESS, monitor.INACTIVE, monitor.EXPIRED, monitor.REMOVED, VOLUME_LOST)
# Enough for minutes of progress of every ticket a host runs at once.
QUEUE_SIZE = 1024
JOIN_TIMEOUT = 5.0


class Subscriber:
    """One subscribed connection: its filter, queue and sender thread."""

    def __init__(self, conn: Connection, events: frozenset[str], queue_size: int) -> None:
        self.conn = conn
        self.events = events
        self._queue: deque[str] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition(threading.Lock())
        self._stopped = False
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"events/{conn.ident}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, name: str, line: str) -> None:
        if name not in self.events:
            return
        with self._cond:
            if self._stopped:
                return
            if len(self._queue) >= self._queue_size:
                self._dropped += 1
                if self._dropped == 1:
                    log.warning(
                        "DROP notifications connection=%d reason=queue-full limit=%d",
                        self.conn.ident,
                        self._queue_size,
                    )
                return
            if self._dropped:
                log.warning(
                    "DROPPED notifications connection=%d count=%d", self.conn.ident, self._dropped
                )
                self._dropped = 0
            self._queue.append(line)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                line = self._queue.popleft()
            # Blocks at most the connection's send timeout; then the
            # connection drops the peer and closes, which unsubscribes.
            if not self.conn.send_line(line):
                return


class EventHub:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: dict[Connection, Subscriber] = {}

    def subscribe(self, conn: Connection, events: frozenset[str]) -> None:
        with self._lock:
            sub = self._subscribers.get(conn)
            if sub is not None:
                sub.events = events
                return
            sub = Subscriber(conn, events, self._queue_size)
            self._subscribers[conn] = sub
            sub.start()
        log.info("SUBSCRIBE connection=%d events=%s", conn.ident, ",".join(sorted(events)))
        # Outside the lock: on a closed connection the callback runs at once.
        conn.on_close(self.unsubscribe)

    def unsubscribe(self, conn: Connection) -> None:
        with self._lock:
            sub = self._subscribers.pop(conn, None)
        if sub is not None:
            sub.stop()
            log.info("UNSUBSCRIBE connection=%d", conn.ident)

    def publish(self, name: str, params: dict[str, Any]) -> None:
        """Queue a notification for its subscribers; never blocks or raises."""
        if name not in EVENTS:
            log.error("PUBLISH unknown event=%s", name)
            return
        try:
            line = protocol.notification_line(name, params)
        except (TypeError, ValueError):
            log.exception("PUBLISH unserializable event=%s", name)
            return
        with self._lock:
            subscribers = list(self._subscribers.values())
        for sub in subscribers:
            sub.offer(name, line)

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def stop(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers.values())
            self._subscribers.clear()
        for sub in subscribers:
            sub.stop()
        for sub in subscribers:
            sub.join(JOIN_TIMEOUT)


class EventVerbs:
    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    def subscribe(self, connection: Connection, events: object = None) -> bool:
        """Push the named events (all when omitted) to this connection."""
        names = list(EVENTS) if events is None else params.strings("events", events)
        if not names:
            raise InvalidParam(
                field="events", reason="must name at least one event; omit it for all"
            )
        for name in names:
            if name not in EVENTS:
                raise InvalidParam(
                    field="events", reason=f"unknown event {show(name)}; known: {', '.join(EVENTS)}"
                )
        self._hub.subscribe(connection, frozenset(names))
        return True


def event_methods(hub: EventHub) -> dict[str, Method]:
    verbs = EventVerbs(hub)
    return {
        "Events.subscribe": verb(verbs.subscribe, name="Events.subscribe", pass_connection=True)
    }
