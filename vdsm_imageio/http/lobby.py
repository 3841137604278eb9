"""The lobby: new connections wait here, without a thread, until they speak.

Theory of operation: one thread owns the listening sockets and every
connection that has not yet sent a complete request head. It accepts
without blocking, has the server admit each new socket (the admission
policy, ``vdsm_imageio.http.admission``, may name an older one to close),
advances TLS handshakes and reads request heads one non-blocking call at a
time, and hands a connection whose head has arrived to the server, which
gives it a worker thread. A crowd of silent or dripping sockets costs a
file descriptor each for as long as the policy keeps them, never a thread,
and no socket makes another wait. TLS state is made only when the client
sends its first byte, the Connection only when its head has arrived: a
socket the policy evicts soon costs little. A guest is the connection's
name in the admission policy for its whole life, also once a worker owns
it.

Deadlines are kept here and counted from accept: the TLS handshake within
``[tls] handshake_timeout`` and the first request head within ``[http]
header_timeout``, so the handshake is part of the head's time. Guests are
kept in accept order, so the overdue ones are always at the front.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Hashable
from contextlib import suppress
from typing import Protocol

from .. import tls
from ..config import Config
from ..sockets import ACCEPT_CAPACITY_ERRNOS
from .admission import Eviction, peer_group
from .listeners import Listener
from .reader import BUFFER_SIZE

log = logging.getLogger(__name__)

# Retry accepting this long after running out of file descriptors; the
# kernel queues the connections meanwhile.
ACCEPT_PAUSE = 0.1
# Accepts per wakeup before the lobby serves its guests again: a flood of
# new sockets must not starve the handshakes of those already in.
ACCEPT_BATCH = 16


class Worker(Protocol):
    """A connection a worker thread serves: the lobby may still evict it."""

    def abort(self) -> None: ...


class Host(Protocol):
    """The server, as the lobby uses it (``vdsm_imageio.http.server``)."""

    def admit(self, key: Hashable, group: str) -> Eviction[Hashable] | None:
        """Admit a new unauthenticated connection; the one to close for it, if any."""

    def admit_trusted(self, key: Hashable) -> bool:
        """Admit a connection of a trusted listener; False when no slot is free."""

    def release(self, key: Hashable) -> None:
        """Forget a connection closed before it had a worker."""

    def serve(
        self,
        sock: socket.socket,
        peer: str,
        listener: Listener,
        *,
        admission: Hashable,
        head: bytes,
        head_due: float,
    ) -> Worker:
        """Serve a connection whose request head has arrived, in a worker thread."""


class EvictionLog:
    """EVICTED lines: one per eviction up to a burst a second, then counts.

    A crowd churning hundreds of sockets a second would otherwise write
    hundreds of lines a second: log rotation would soon drop everything
    else, and formatting them would take the interpreter from the
    transfers. Past the burst, evictions are counted by reason and one
    summary line a second reports them.
    """

    def __init__(
        self, burst: int = 20, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst = burst
        self._window = window
        self._clock = clock
        self._start = clock()
        self._logged = 0
        self._counted: dict[str, int] = {}

    def evicted(self, peer: str, eviction: Eviction[Hashable]) -> None:
        self.flush()
        if self._logged < self._burst:
            self._logged += 1
            log.info(
                "EVICTED peer=%s reason=%s limit=%d group=%s age=%.1fs",
                peer,
                eviction.reason,
                eviction.limit,
                eviction.peer,
                eviction.age,
            )
        else:
            self._counted[eviction.reason] = self._counted.get(eviction.reason, 0) + 1

    def due(self) -> float | None:
        """When flush has a summary to write, if it has one."""
        return self._start + self._window if self._counted else None

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of a window that has ended (or any, forced); start a new one."""
        now = self._clock()
        if now < self._start + self._window and not force:
            return
        if self._counted:
            log.info(
                "EVICTED count=%d %s window=%.0fs (past %d a second, counted, not listed)",
                sum(self._counted.values()),
                " ".join(f"{k}={v}" for k, v in sorted(self._counted.items())),
                now - self._start,
                self._burst,
            )
        self._start = now
        self._logged = 0
        self._counted = {}


class _Guest:
    """A socket in the lobby; also its name in the admission policy for life."""

    __slots__ = (
        "conn",
        "events",
        "handshaking",
        "head",
        "listener",
        "peer",
        "since",
        "sock",
        "wrapped",
    )

    def __init__(self, sock: socket.socket, peer: str, listener: Listener, since: float) -> None:
        self.sock = sock
        self.peer = peer
        self.listener = listener
        self.since = since
        # TLS starts with the client's first byte: a socket that never sends
        # one costs no TLS state.
        self.wrapped = listener.context is None
        self.handshaking = not self.wrapped
        self.head = bytearray()
        self.events = selectors.EVENT_READ
        # Set when the head has arrived and a worker owns the connection.
        self.conn: Worker | None = None


class Lobby:
    def __init__(
        self, server: Host, config: Config, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._server = server
        self._clock = clock
        self._max_connections = config.http.max_connections
        self._header_timeout = config.http.header_timeout
        self._handshake_timeout = min(config.tls.handshake_timeout, config.http.header_timeout)
        # Enough for the parser to see a head too large (431) without
        # reading it whole here; a larger head limit reads the rest later.
        self._head_limit = min(BUFFER_SIZE, config.http.max_header_bytes + 1)
        self._listeners: list[Listener] = []
        self._paused: dict[Listener, float] = {}
        # Both in accept order, so each one's first guest is due first.
        self._guests: dict[_Guest, None] = {}
        self._handshaking: dict[_Guest, None] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._evictions = EvictionLog(clock=clock)
        self._thread = threading.Thread(target=self._run, name="lobby", daemon=True)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        for listener in self._listeners:
            listener.sock.setblocking(False)
            self._selector.register(listener.sock, selectors.EVENT_READ, listener)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        with suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.ident is not None:
            self._thread.join()
        else:
            self._close_all()

    # The loop.

    def _run(self) -> None:
        try:
            while not self._stopping:
                ready: list[Listener] = []
                for key, _ in self._selector.select(self._timeout()):
                    if key.data is None:
                        with suppress(OSError):
                            self._wake_r.recv(64)
                    elif isinstance(key.data, _Guest):
                        # Closed earlier in this round: its event is stale.
                        if key.data in self._guests:
                            self._step(key.data)
                    else:
                        ready.append(key.data)
                # Guests first: a client already in moves on before the
                # newcomers accepted after it can push it out.
                for listener in ready:
                    self._accept(listener)
                now = self._clock()
                self._expire(now)
                self._resume(now)
                self._evictions.flush()
        except Exception:
            # Guests' and newcomers' failures are caught where they happen;
            # this is the loop itself failing: say so loudly.
            log.exception("LOBBY stopped: no new connections are accepted")
        finally:
            self._close_all()

    def _timeout(self) -> float | None:
        due = [g.since + self._handshake_timeout for g in _first(self._handshaking)]
        due += [g.since + self._header_timeout for g in _first(self._guests)]
        due += self._paused.values()
        if (summary := self._evictions.due()) is not None:
            due.append(summary)
        if not due:
            return None
        return max(0.0, min(due) - self._clock())

    # New connections.

    def _accept(self, listener: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if self._stopping:
                    return
                self._selector.unregister(listener.sock)
                if e.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.warning("ACCEPT paused listener=%s reason=%s", listener.name, e)
                    self._paused[listener] = self._clock() + ACCEPT_PAUSE
                else:
                    log.error("ACCEPT stopped listener=%s reason=%s", listener.name, e)
                return
            try:
                self._welcome(sock, addr, listener)
            except Exception:
                # A bug must cost one connection, not the listener.
                log.exception("LOBBY failed peer=%s", peer_name(addr, listener))
                sock.close()

    def _resume(self, now: float) -> None:
        for listener, when in list(self._paused.items()):
            if when <= now:
                del self._paused[listener]
                self._selector.register(listener.sock, selectors.EVENT_READ, listener)

    def _welcome(self, sock: socket.socket, addr: object, listener: Listener) -> None:
        peer = peer_name(addr, listener)
        try:
            sock.setblocking(False)
            group = _group(sock, addr)
            if listener.context is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            log.info("CLOSED peer=%s reason=%s", peer, e.strerror or e)
            sock.close()
            return
        guest = _Guest(sock, peer, listener, self._clock())
        if listener.trusted:
            if not self._server.admit_trusted(guest):
                log.warning(
                    "REFUSED peer=%s reason=max_connections %d reached",
                    peer,
                    self._max_connections,
                )
                sock.close()
                return
        else:
            evicted = self._server.admit(guest, group)
            if evicted is not None:
                self._evict(evicted)
        self._guests[guest] = None
        if guest.handshaking:
            self._handshaking[guest] = None
        self._selector.register(sock, guest.events, guest)

    def _evict(self, eviction: Eviction[Hashable]) -> None:
        guest = eviction.conn
        assert isinstance(guest, _Guest)
        self._evictions.evicted(guest.peer, eviction)
        if guest.conn is None:
            self._close(guest)
        else:
            # Its request head arrived: a worker owns it now.
            guest.conn.abort()

    # Guests.

    def _step(self, guest: _Guest) -> None:
        try:
            if guest.handshaking:
                if not guest.wrapped:
                    context = guest.listener.context
                    assert context is not None
                    guest.sock = self._rewrap(guest, context)
                wait = tls.handshake_step(guest.sock)  # type: ignore[arg-type]
                if wait:
                    self._wait(guest, wait)
                    return
                guest.handshaking = False
                del self._handshaking[guest]
            self._read_head(guest)
        except tls.HandshakeFailed as e:
            log.info("CLOSED peer=%s reason=%s", guest.peer, e)
            self._close(guest)
        except Exception:
            log.exception("LOBBY failed peer=%s", guest.peer)
            self._close(guest)

    def _rewrap(self, guest: _Guest, context: ssl.SSLContext) -> ssl.SSLSocket:
        """The guest's socket as TLS, registered in its place (no I/O)."""
        self._selector.unregister(guest.sock)
        guest.events = 0
        guest.wrapped = True
        try:
            sock = context.wrap_socket(guest.sock, server_side=True, do_handshake_on_connect=False)
        except OSError as e:
            raise tls.HandshakeFailed(peer=guest.peer, reason=e.strerror or str(e)) from None
        guest.events = selectors.EVENT_READ
        self._selector.register(sock, guest.events, guest)
        return sock

    def _read_head(self, guest: _Guest) -> None:
        sock = guest.sock
        head = guest.head
        while True:
            try:
                data = sock.recv(self._head_limit - len(head))
            except (ssl.SSLWantReadError, BlockingIOError):
                self._wait(guest, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._wait(guest, selectors.EVENT_WRITE)
                return
            except OSError as e:
                log.info("CLOSED peer=%s reason=%s", guest.peer, e.strerror or e)
                self._close(guest)
                return
            if not data:
                # Closed before asking anything, like a health check.
                self._close(guest)
                return
            start = max(0, len(head) - 2)
            head += data
            if _blank_line(head, start) or len(head) >= self._head_limit:
                self._hand_off(guest)
                return

    def _wait(self, guest: _Guest, events: int) -> None:
        if guest.events != events:
            guest.events = events
            self._selector.modify(guest.sock, events, guest)

    def _hand_off(self, guest: _Guest) -> None:
        self._forget(guest)
        guest.conn = self._server.serve(
            guest.sock,
            guest.peer,
            guest.listener,
            admission=guest,
            head=bytes(guest.head),
            head_due=guest.since + self._header_timeout,
        )
        guest.head = bytearray()

    def _expire(self, now: float) -> None:
        late: list[tuple[_Guest, str]] = []
        for guest in self._handshaking:
            if guest.since + self._handshake_timeout > now:
                break
            late.append((guest, "TLS handshake"))
        for guest in self._guests:
            if guest.since + self._header_timeout > now:
                break
            if not guest.handshaking:
                late.append((guest, "request head"))
        for guest, what in late:
            log.info("TIMEOUT peer=%s reason=%s not complete in time", guest.peer, what)
            self._close(guest)

    def _forget(self, guest: _Guest) -> None:
        del self._guests[guest]
        self._handshaking.pop(guest, None)
        if guest.events:
            self._selector.unregister(guest.sock)
            guest.events = 0

    def _close(self, guest: _Guest) -> None:
        self._forget(guest)
        guest.sock.close()
        self._server.release(guest)

    def _close_all(self) -> None:
        self._evictions.flush(force=True)
        for guest in list(self._guests):
            self._close(guest)
        for listener in self._listeners:
            with suppress(OSError):
                listener.sock.shutdown(socket.SHUT_RDWR)
            listener.sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def peer_name(addr: object, listener: Listener) -> str:
    """How logs name a peer: address and port, or the listener's name."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = addr[0]
        return f"[{host}]:{addr[1]}" if ":" in str(host) else f"{host}:{addr[1]}"
    return listener.name


def _group(sock: socket.socket, addr: object) -> str:
    """The admission policy's peer group of a new socket."""
    if isinstance(addr, tuple):
        return peer_group(str(addr[0]))
    # Unix sockets have no address: the kernel vouches for the peer's user.
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return f"unix uid={uid}"


def _blank_line(head: bytearray, start: int) -> bool:
    """Whether an empty line, the end of a request head, arrived from start on."""
    return head.find(b"\n\r\n", start) >= 0 or head.find(b"\n\n", start) >= 0


def _first(guests: dict[_Guest, None]) -> list[_Guest]:
    return [next(iter(guests))] if guests else []
