"""A TCP relay on loopback that counts, throttles and can hold the bytes
between a client and the daemon's TLS port (it never looks inside TLS).

- ``up`` and ``down`` count the bytes forwarded to the daemon and back;
- ``rate`` (bytes/s, per direction, all connections together) slows a
  transfer down so a test can act in the middle of it;
- ``hold_up_after`` / ``hold_down_after``: once that many bytes went that
  way, the relay forwards nothing more that way until ``release()``;
  ``held`` is set then.

Every loop is bounded by the relay's ``stop``; threads are daemon threads
joined at stop.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

from tests.support.relay import LoopbackRelay

CHUNK = 256 * 1024
POLL = LoopbackRelay.POLL


class Relay(LoopbackRelay):
    def __init__(
        self,
        upstream_port: int,
        *,
        rate: float | None = None,
        hold_up_after: int | None = None,
        hold_down_after: int | None = None,
    ) -> None:
        self._rate = rate
        self._hold = {"up": hold_up_after, "down": hold_down_after}
        self.counts = {"up": 0, "down": 0}
        self.held = threading.Event()
        self._released = threading.Event()
        self._started = time.monotonic()
        super().__init__(upstream_port, connect_timeout=10, join_timeout=5)

    @property
    def up(self) -> int:
        return self.counts["up"]

    @property
    def down(self) -> int:
        return self.counts["down"]

    def release(self) -> None:
        """Forward everything from now on, at full speed."""
        self._hold = {"up": None, "down": None}
        self._rate = None
        self._released.set()

    def reset(self) -> None:
        """Zero the counts and the rate's clock (a new transfer begins)."""
        with self._lock:
            self.counts = {"up": 0, "down": 0}
            self._started = time.monotonic()

    def stop(self) -> None:
        self._released.set()
        super().stop()

    def _connected(self, client: socket.socket, upstream: socket.socket) -> None:
        self._spawn(self._pump, client, upstream, "up")
        self._spawn(self._pump, upstream, client, "down")

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while not self._stop.is_set():
                if self._is_held(way):
                    self.held.set()
                    self._released.wait(POLL)
                    continue
                ready, _, _ = select.select([src], [], [], POLL)
                if not ready:
                    continue
                data = src.recv(self._room(way))
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    self.counts[way] += len(data)
                self._throttle(way)
        except OSError:
            pass
        finally:
            # A half close passes the end of a stream on; the other pump
            # ends the rest.
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RD)

    def _is_held(self, way: str) -> bool:
        limit = self._hold[way]
        return limit is not None and self.counts[way] >= limit

    def _room(self, way: str) -> int:
        limit = self._hold[way]
        if limit is None:
            return CHUNK
        return max(1, min(CHUNK, limit - self.counts[way]))

    def _throttle(self, way: str) -> None:
        if self._rate is None:
            return
        # Sleep until the bytes so far fit the rate since the start.
        due = self._started + self.counts[way] / self._rate
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(min(delay, 1.0))
