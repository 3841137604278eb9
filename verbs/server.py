"""The control socket: JSON-RPC 2.0 lines on a unix stream socket.

Theory of operation: one thread accepts; each connection gets a thread
(``connection.Connection``) that answers its lines one after the other, so
a verb that blocks (Ticket.remove waiting for requests to drain) blocks
only its own connection. Other threads push notifications with
``Connection.notify``.

Every method is called with the Connection as its first argument
(jsonrpcserver's context); ``verbs.errors.verb`` hides it from verbs that
do not ask for it.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import stat
import threading
import time
from typing import Any

from vdsm_imageio.sockets import ACCEPT_CAPACITY_ERRNOS

from . import protocol
from .connection import MAX_LINE, Connection

__all__ = ["MAX_LINE", "Connection", "ControlServer", "send_notification"]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 0.5
JOIN_TIMEOUT = 10.0
MAX_CONNECTIONS = 64


class ControlServer:
    def __init__(
        self,
        path: str,
        methods: protocol.Methods,
        mode: int = 0o660,
        *,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self._methods = methods
        self._mode = mode
        self._max_connections = max_connections
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: dict[Connection, threading.Thread] = {}
        self._ids = itertools.count(1)
        self._stopping = False

    def start(self) -> None:
        _remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Before listen(): nobody connects while the mode is the umask's.
            os.chmod(self.path, self._mode)
            self._inode = os.stat(self.path).st_ino
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="control/accept", daemon=True
        )
        self._accept_thread.start()
        log.info("LISTEN control=%s mode=%o", self.path, self._mode)

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone
            # does not on Linux.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            conn.close()
        # One deadline for all: a verb still running (a remove waiting for
        # requests) must not stretch the service's 1 s stop per connection.
        deadline = time.monotonic() + STOP_TIMEOUT
        for conn, thread in conns.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("STUCK connection=%d: a verb is still running", conn.ident)
        self._unlink()
        log.info("STOP control=%s", self.path)

    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError as e:
                if self._stopping:
                    return
                if e.errno in ACCEPT_CAPACITY_ERRNOS:
                    # Out of descriptors or memory: retry later instead of
                    # giving up on the control channel.
                    log.warning("ACCEPT failed, retrying: %s", e)
                    time.sleep(0.1)
                    continue
                log.exception("ACCEPT failed, control channel stops")
                return
            self._start_connection(sock)

    def _start_connection(self, sock: socket.socket) -> None:
        conn = Connection(sock, next(self._ids))
        thread = threading.Thread(
            target=self._serve, args=(conn,), name=f"control/{conn.ident}", daemon=True
        )
        with self._lock:
            if self._stopping or len(self._conns) >= self._max_connections:
                full = True
            else:
                full = False
                self._conns[conn] = thread
                # Under the lock so stop() never joins an unstarted thread.
                thread.start()
        if full:
            log.warning(
                "REFUSE connection=%d reason=too-many-connections limit=%d",
                conn.ident,
                self._max_connections,
            )
            conn.close()
            sock.close()
            return
        log.debug("OPEN connection=%d", conn.ident)

    def _serve(self, conn: Connection) -> None:
        try:
            conn.serve(self._methods)
        finally:
            with self._lock:
                self._conns.pop(conn, None)

    def _unlink(self) -> None:
        # Leave a socket another daemon bound after us in place.
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def send_notification(conn: Connection, method: str, params: Any) -> bool:
    return conn.notify(method, params)


def _remove_stale(path: str) -> None:
    """Remove a socket left by a daemon that died; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "Not a socket, refusing to replace", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except FileNotFoundError:
        return
    except ConnectionRefusedError:
        log.info("REMOVE stale control=%s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "Another service listens on", path)
