"""A TCP relay on loopback between a client and one of the daemon's ports.

It never looks inside the bytes (TLS stays end to end). This base accepts,
connects each client to the daemon and owns the threads and sockets; a
subclass decides how the two directions are pumped (counted, throttled,
held, broken) in ``_connected``. Every loop ends with ``stop()``: the
accept loop polls the stop flag, and stop shuts every socket down before
it joins the threads.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any, Self


class LoopbackRelay:
    POLL = 0.05

    def __init__(self, upstream_port: int, *, connect_timeout: float, join_timeout: float) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._connect_timeout = connect_timeout
        self._join_timeout = join_timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(self.POLL)
        self.port: int = self._listener.getsockname()[1]
        self._spawn(self._accept)

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(self._join_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connected(self, client: socket.socket, upstream: socket.socket) -> None:
        """Start pumping between a new client and its upstream connection."""
        raise NotImplementedError

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
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
                upstream = socket.create_connection(self._upstream, timeout=self._connect_timeout)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._stop.is_set():  # stop() has closed the others already
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            self._connected(client, upstream)
