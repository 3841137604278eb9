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

CHUNK = 256 * 1024
POLL = 0.05


class Relay:
    def __init__(
        self,
        upstream_port: int,
        *,
        rate: float | None = None,
        hold_up_after: int | None = None,
        hold_down_after: int | None = None,
    ) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._rate = rate
        self._hold = {"up": hold_up_after, "down": hold_down_after}
        self.counts = {"up": 0, "down": 0}
        self.held = threading.Event()
        self._released = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._spawn(self._accept)

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
        self._stop.set()
        self._released.set()
        for t in self._threads:
            t.join(5)
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            self._spawn(self._pump, client, server, "up")
            self._spawn(self._pump, server, client, "down")

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
