"""The data server: listeners, admission, connection workers and deadlines.

Theory of operation: the lobby thread (``vdsm_imageio.http.lobby``)
accepts on every listener (TLS on TCP, plain HTTP on a unix socket), runs
TLS handshakes and reads request heads without blocking; a connection
whose head has arrived gets a worker thread of its own, which serves it to
the end. Which connections are kept is the admission policy's decision
(``vdsm_imageio.http.admission``): connections that have not proved a
ticket have a small budget and evict their oldest, authorized ones have
``max_connections`` slots that nobody else takes, so sockets held open by
anyone who can reach the port never lock a ticket holder out.
A single reaper thread enforces the header deadline of a later request
head on a connection that has not been authorized: a per-recv socket
timeout alone lets a client drip one byte at a time forever.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import suppress

from ..backends import Backend
from ..config import Config
from ..pipeline import BufferPool
from ..tickets import Ticket
from .admission import Admission, Eviction
from .connection import Connection
from .lobby import Lobby
from .router import Router

log = logging.getLogger(__name__)

# A burst of connections waits in the kernel's queue while the lobby
# accepts; a full queue drops a TCP client's SYN, which costs that client a
# retransmit a second later (the kernel caps this at net.core.somaxconn).
BACKLOG = 1024


class Deadlines:
    """Aborts connections that have not finished a request head in time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, interval: float = 0.25) -> None:
        self._clock = clock
        self._interval = interval
        self._armed: dict[Connection, float] = {}
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

    def arm(self, conn: Connection, timeout: float) -> None:
        with self._lock:
            self._armed[conn] = self._clock() + timeout

    def disarm(self, conn: Connection) -> None:
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


class Listener:
    """A listening socket; trusted when the OS authenticated its peers.

    The ticket API's socket is trusted: its file mode admits only vdsm, so
    its connections are authorized from accept.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        context: ssl.SSLContext | None,
        *,
        trusted: bool = False,
    ) -> None:
        self.sock = sock
        self.name = name
        self.context = context
        self.trusted = trusted

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def tcp_listener(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    *,
    name: str = "tls",
    trusted: bool = False,
) -> Listener:
    """TLS on host:port, or plain HTTP without a context; "" binds every address."""
    if host == "" and socket.has_dualstack_ipv6():
        sock = socket.create_server(
            ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=BACKLOG
        )
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    return Listener(sock, name, context, trusted=trusted)


def unix_listener(address: str, mode: int = 0o660) -> Listener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not address.startswith("\0"):
            with suppress(FileNotFoundError):
                os.unlink(address)
        sock.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, mode)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return Listener(sock, "unix", None)


class Server:
    def __init__(
        self, config: Config, router: Router, open_backend: Callable[[Ticket], Backend]
    ) -> None:
        self.config = config
        self.router = router
        self.open_backend = open_backend
        self.deadlines = Deadlines()
        # Two buffers at least: one request can always double-buffer.
        count = max(2, config.http.buffer_pool_bytes // config.http.buffer_size)
        self.pool = BufferPool(config.http.buffer_size, count)
        self._admission: Admission[Hashable] = Admission(
            max_authorized=config.http.max_connections,
            max_unauthenticated=config.http.max_unauthenticated,
            max_per_peer=config.http.max_unauthenticated_per_peer,
        )
        self._lobby = Lobby(self)
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._stopping = False

    def add_listener(self, listener: Listener) -> None:
        self._lobby.add_listener(listener)

    def start(self) -> None:
        self.deadlines.start()
        self._lobby.start()

    def connections(self) -> int:
        with self._lock:
            return self._admission.authorized + self._admission.unauthenticated

    def stop(self, timeout: float = 0.5) -> None:
        """Close listeners, abort every connection, wait for workers."""
        self._stopping = True
        self._lobby.stop()
        with self._lock:
            conns = list(self._conns)
            workers = list(self._workers)
        for conn in conns:
            conn.abort()
        deadline = time.monotonic() + timeout
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.deadlines.stop()

    # Admission (vdsm_imageio.http.admission); the lobby admits and
    # releases, a connection's worker authorizes and releases.

    def admit(self, key: Hashable, group: str) -> Eviction[Hashable] | None:
        with self._lock:
            return self._admission.admit(key, group)

    def admit_trusted(self, key: Hashable) -> bool:
        with self._lock:
            return self._admission.admit_trusted(key)

    def authorize(self, conn: Connection) -> bool:
        """Whether conn, whose request named a live ticket, may be authorized."""
        with self._lock:
            return self._admission.authorize(conn.admission)

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._admission.release(key)

    # Workers.

    def serve(self, conn: Connection, listener: Listener) -> None:
        """Run conn, whose request head has arrived, in a worker thread of its own."""
        worker = threading.Thread(
            target=self._serve, args=(conn,), name=f"conn-{listener.name}", daemon=True
        )
        with self._lock:
            self._workers.add(worker)
            self._conns.add(conn)
        worker.start()

    def _serve(self, conn: Connection) -> None:
        try:
            if self._stopping:
                conn.close()
            else:
                conn.run()
        except Exception:
            log.exception("WORKER failed peer=%s", conn.peer)
            conn.sock.close()
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._admission.release(conn.admission)
                self._workers.discard(threading.current_thread())
