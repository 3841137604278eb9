"""The control socket: JSON-RPC 2.0 lines on a unix stream socket.

Theory of operation: one thread accepts; each connection gets a thread
that reads lines and answers them one after the other, so replies on a
connection come in request order, and a verb that blocks (Ticket.remove
waiting for requests to drain) blocks only its own connection. Other
threads push notifications with ``Connection.notify``; it shares the
connection's writer lock with the replies, so lines never interleave. A
peer that stops reading is dropped after ``SEND_TIMEOUT`` rather than
blocking the notifier. A line longer than ``MAX_LINE`` gets an error and
the connection is closed, so a broken client cannot eat memory.

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
from collections.abc import Callable, Iterator
from typing import Any

from . import protocol

log = logging.getLogger(__name__)

MAX_LINE = 1024**2
SEND_TIMEOUT = 30.0
JOIN_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
RECV_SIZE = 65536
# Out of descriptors or memory: the listener is fine, retry later
# instead of giving up on the control channel.
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

CloseCallback = Callable[["Connection"], None]


class Connection:
    """One client of the control socket; owns its socket."""

    def __init__(self, sock: socket.socket, ident: int) -> None:
        self.ident = ident
        self._sock = sock
        self._wlock = threading.Lock()
        self._closed = False
        self._callbacks: list[CloseCallback] = []
        # Blocking reads loop on the timeout; it bounds sends.
        sock.settimeout(SEND_TIMEOUT)

    @property
    def closed(self) -> bool:
        return self._closed

    def on_close(self, callback: CloseCallback) -> None:
        """Call callback once when the connection ends (subscriptions end)."""
        with self._wlock:
            if not self._closed:
                self._callbacks.append(callback)
                return
        callback(self)

    def notify(self, method: str, params: Any) -> bool:
        """Push a notification; False if the connection is gone."""
        return self.send_line(protocol.notification_line(method, params))

    def send_line(self, text: str) -> bool:
        data = text.encode("utf-8") + b"\n"
        with self._wlock:
            if self._closed:
                return False
            try:
                self._sock.sendall(data)
                return True
            except OSError as e:
                log.warning("DROP connection=%d reason=%s", self.ident, e)
                self._shutdown_locked()
                return False

    def close(self) -> None:
        """Stop the connection; its reader thread releases the socket."""
        with self._wlock:
            self._shutdown_locked()

    def serve(self, methods: protocol.Methods) -> None:
        try:
            for line in self._lines():
                if line.strip():
                    reply = protocol.respond(line, methods, self)
                    if reply is not None and not self.send_line(reply):
                        break
        except OSError as e:
            log.warning("DROP connection=%d reason=%s", self.ident, e)
        finally:
            self._release()

    def _lines(self) -> Iterator[bytes]:
        buf = bytearray()
        scanned = 0
        while True:
            nl = buf.find(b"\n", scanned)
            if nl >= 0:
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                scanned = 0
                if len(line) > MAX_LINE:
                    self._refuse_long_line()
                    return
                yield line
                continue
            if len(buf) > MAX_LINE:
                self._refuse_long_line()
                return
            scanned = len(buf)
            try:
                chunk = self._sock.recv(RECV_SIZE)
            except TimeoutError:
                continue  # an idle client is fine
            if not chunk:
                return
            buf += chunk

    def _refuse_long_line(self) -> None:
        log.warning("REFUSE connection=%d reason=line-too-long limit=%d",
                    self.ident, MAX_LINE)
        self.send_line(protocol.error_line(
            protocol.INVALID_REQUEST, "Invalid request",
            f"request line exceeds {MAX_LINE} bytes"))

    def _shutdown_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer is already gone

    def _release(self) -> None:
        # Closed under the writer lock so no notifier is inside sendall on
        # a descriptor number the kernel may hand out again.
        with self._wlock:
            self._shutdown_locked()
            self._sock.close()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("CLOSE callback failed connection=%d", self.ident)
        log.debug("CLOSE connection=%d", self.ident)


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
            target=self._accept_loop, name="control/accept", daemon=True)
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
        for conn, thread in conns.items():
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():
                log.warning("STUCK connection=%d: a verb is still running",
                            conn.ident)
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
                    log.warning("ACCEPT failed, retrying: %s", e)
                    time.sleep(0.1)
                    continue
                log.exception("ACCEPT failed, control channel stops")
                return
            self._start_connection(sock)

    def _start_connection(self, sock: socket.socket) -> None:
        conn = Connection(sock, next(self._ids))
        thread = threading.Thread(
            target=self._serve, args=(conn,), name=f"control/{conn.ident}",
            daemon=True)
        with self._lock:
            if self._stopping or len(self._conns) >= self._max_connections:
                full = True
            else:
                full = False
                self._conns[conn] = thread
                # Under the lock so stop() never joins an unstarted thread.
                thread.start()
        if full:
            log.warning("REFUSE connection=%d reason=too-many-connections limit=%d",
                        conn.ident, self._max_connections)
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
