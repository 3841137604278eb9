"""The header deadline of a later request head on an unauthenticated connection.

A per-recv socket timeout alone lets a client drip one byte at a time
forever: one reaper thread aborts every connection whose head is not
complete by its deadline. (The first head's deadline is the lobby's,
``vdsm_imageio.http.lobby``.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Abortable(Protocol):
    @property
    def peer(self) -> str: ...

    def abort(self) -> None: ...


class Deadlines:
    """Aborts connections that have not finished a request head in time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval: float = 0.25) -> None:
        self._clock = clock
        self._interval = interval
        self._armed: dict[Abortable, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # Stopping a service whose start failed half-way is fine.
        if self._thread.ident is not None:
            self._thread.join()

    def arm(self, conn: Abortable, timeout: float) -> None:
        with self._lock:
            self._armed[conn] = self._clock() + timeout

    def disarm(self, conn: Abortable) -> None:
        with self._lock:
            self._armed.pop(conn, None)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = self._clock()
            with self._lock:
                late = [c for c, t in self._armed.items() if t <= now]
                for conn in late:
                    del self._armed[conn]
            for conn in late:
                log.info("TIMEOUT peer=%s reason=request head not complete in time", conn.peer)
                conn.abort()
