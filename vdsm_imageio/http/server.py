"""The data server: listeners, admission, connection workers and deadlines.

Theory of operation: the lobby thread (``vdsm_imageio.http.lobby``)
accepts on every listener (``vdsm_imageio.http.listeners``: TLS on TCP,
plain HTTP on a unix socket), runs TLS handshakes and reads request heads
without blocking; a connection whose head has arrived gets a worker thread
of its own, which serves it to the end. Which connections are kept is the
admission policy's decision (``vdsm_imageio.http.admission``): connections
that have not proved a ticket have a small budget and evict their oldest,
authorized ones have ``max_connections`` slots that nobody else takes, so
sockets held open by anyone who can reach the port never lock a ticket
holder out. A reaper thread (``vdsm_imageio.http.deadlines``) enforces the
header deadline of a later request head on a connection that has not been
authorized.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Hashable

from ..backends import Backend
from ..config import Config
from ..tickets import Ticket
from .admission import Admission, Eviction
from .connection import Connection, Context
from .deadlines import Deadlines
from .listeners import Listener
from .lobby import Lobby
from .router import Router

log = logging.getLogger(__name__)


class Server:
    def __init__(
        self, config: Config, router: Router, open_backend: Callable[[Ticket], Backend]
    ) -> None:
        self.config = config
        self._deadlines = Deadlines()
        self._context = Context(
            http=config.http,
            router=router,
            deadlines=self._deadlines,
            open_backend=open_backend,
            authorize=self._authorize,
        )
        self._admission: Admission[Hashable] = Admission(
            max_authorized=config.http.max_connections,
            max_unauthenticated=config.http.max_unauthenticated,
            max_per_peer=config.http.max_unauthenticated_per_peer,
        )
        self._lobby = Lobby(self, config)
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._stopping = False

    def add_listener(self, listener: Listener) -> None:
        self._lobby.add_listener(listener)

    def start(self) -> None:
        self._deadlines.start()
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
        self._deadlines.stop()

    # Admission (vdsm_imageio.http.admission); the lobby admits and
    # releases, a connection's worker authorizes and releases.

    def admit(self, key: Hashable, group: str) -> Eviction[Hashable] | None:
        with self._lock:
            return self._admission.admit(key, group)

    def admit_trusted(self, key: Hashable) -> bool:
        with self._lock:
            return self._admission.admit_trusted(key)

    def _authorize(self, key: Hashable) -> bool:
        """Whether the connection key, whose request named a live ticket, may be authorized."""
        with self._lock:
            return self._admission.authorize(key)

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._admission.release(key)

    # Workers.

    def serve(
        self,
        sock: socket.socket,
        peer: str,
        listener: Listener,
        *,
        admission: Hashable,
        head: bytes,
        head_due: float,
    ) -> Connection:
        """Serve the connection whose request head has arrived in a worker thread of its own."""
        conn = Connection(
            sock, peer, self._context, admission=admission, head=head, head_due=head_due
        )
        worker = threading.Thread(
            target=self._serve, args=(conn,), name=f"conn-{listener.name}", daemon=True
        )
        with self._lock:
            self._workers.add(worker)
            self._conns.add(conn)
        worker.start()
        return conn

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
