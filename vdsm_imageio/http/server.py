"""The data server: listeners, connection workers and their deadlines.

Theory of operation: each listener (TLS on TCP, plain HTTP on a unix
socket) has an accept thread that does nothing but accept and hand the
socket to a new worker thread; the TLS handshake runs in the worker under
its own deadline, so a client that connects and stays silent delays nobody.
The total number of connections is bounded; past the bound a new socket is
closed at once. A single reaper thread enforces the header deadline of
connections that have not been authorized yet: a per-recv socket timeout
alone lets a client drip one byte at a time forever.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from .. import tls
from ..backends import Backend
from ..config import Config
from ..errors import PeerClosed
from ..pipeline import BufferPool
from ..tickets import Ticket
from .connection import Connection
from .router import Router

log = logging.getLogger(__name__)

# Errors of accept() that mean "out of a resource", not "listener closed".
ACCEPT_CAPACITY_ERRNOS = frozenset({23, 24, 105, 12})  # ENFILE EMFILE ENOBUFS ENOMEM


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
    def __init__(self, sock: socket.socket, name: str, context: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.name = name
        self.context = context

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def tcp_listener(host: str, port: int, context: ssl.SSLContext) -> Listener:
    if host == "" and socket.has_dualstack_ipv6():
        sock = socket.create_server(
            ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128
        )
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
    return Listener(sock, "tls", context)


def unix_listener(address: str, mode: int = 0o660) -> Listener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not address.startswith("\0"):
            with suppress(FileNotFoundError):
                os.unlink(address)
        sock.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, mode)
        sock.listen(128)
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
        self._listeners: list[Listener] = []
        self._threads: list[threading.Thread] = []
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._stopping = False

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self.deadlines.start()
        for listener in self._listeners:
            t = threading.Thread(
                target=self._accept_loop,
                args=(listener,),
                name=f"accept-{listener.name}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)

    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def stop(self, timeout: float = 0.5) -> None:
        """Close listeners, abort every connection, wait for workers."""
        self._stopping = True
        for listener in self._listeners:
            with suppress(OSError):
                listener.sock.shutdown(socket.SHUT_RDWR)
            listener.sock.close()
        for t in self._threads:
            t.join(timeout)
        with self._lock:
            conns = list(self._conns)
            workers = list(self._workers)
        for conn in conns:
            conn.abort()
        deadline = time.monotonic() + timeout
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self.deadlines.stop()

    def _accept_loop(self, listener: Listener) -> None:
        while not self._stopping:
            try:
                sock, addr = listener.sock.accept()
            except OSError as e:
                if self._stopping:
                    return
                if e.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.warning("ACCEPT failed listener=%s reason=%s", listener.name, e)
                    time.sleep(0.1)
                    continue
                log.error("ACCEPT stopped listener=%s reason=%s", listener.name, e)
                return
            with self._lock:
                full = len(self._workers) >= self.config.http.max_connections
            if full:
                log.warning(
                    "REFUSED peer=%s reason=max_connections %d reached",
                    _peer(addr, listener),
                    self.config.http.max_connections,
                )
                sock.close()
                continue
            worker = threading.Thread(
                target=self._serve,
                args=(sock, addr, listener),
                name=f"conn-{listener.name}",
                daemon=True,
            )
            with self._lock:
                self._workers.add(worker)
            worker.start()

    def _serve(self, sock: socket.socket, addr: object, listener: Listener) -> None:
        peer = _peer(addr, listener)
        try:
            if listener.context is not None:
                sock = self._handshake(sock, peer, listener.context)
            if listener.name == "tls":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, peer, self)
            with self._lock:
                self._conns.add(conn)
            try:
                if self._stopping:
                    return
                conn.run()
            finally:
                with self._lock:
                    self._conns.discard(conn)
        except PeerClosed as e:
            log.info("CLOSED peer=%s reason=%s", peer, e)
            sock.close()
        except Exception:
            log.exception("WORKER failed peer=%s", peer)
            sock.close()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _handshake(self, sock: socket.socket, peer: str, context: ssl.SSLContext) -> ssl.SSLSocket:
        tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.handshake(tls_sock, self.config.tls.handshake_timeout)
        except BaseException:
            tls_sock.close()
            raise
        return tls_sock


def _peer(addr: object, listener: Listener) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return listener.name
