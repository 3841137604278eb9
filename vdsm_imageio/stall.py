"""How long a client has taken no byte of a spliced download.

A splice into a blocking socket bounded by ``SO_SNDTIMEO`` tells only how
many bytes it moved and when it returned; ``Stall`` turns that into the
time since the client last took data, so the ticket's inactivity timeout
covers a whole stall (``vdsm_imageio.zerocopy``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from .sockets import timeval


class Stall:
    """Since when the client has taken no byte, told by blocking splices.

    A splice into a blocking socket returns when it moved all it was asked,
    when the pipe ran dry, or when a wait for socket buffer space outlasted
    SO_SNDTIMEO, having moved the bytes that fitted before. Only the last
    case hides when the client stopped: the bytes went at the start of a
    wait that then lasted the whole limit, so the stall began at least
    ``limit`` before the return (since Linux 6.5 the splice then waits once
    more before it returns). Each wait is one slice of the timeout, so the
    stall is known within a few slices, and the deadline covers the whole
    stall instead of restarting with every partial splice.
    """

    SLICES = 16
    MAX_SLICE = 0.5

    def __init__(self, timeout: float | None, now: float) -> None:
        self._timeout = timeout
        self._since = now
        self._slice = None if timeout is None else min(timeout / self.SLICES, self.MAX_SLICE)

    def wait_limit(self, now: float) -> float | None:
        """The next send's SO_SNDTIMEO: None waits forever, <= 0 means the
        client has taken nothing for the whole timeout."""
        if self._timeout is None or self._slice is None:
            return None
        return min(self._since + self._timeout - now, self._slice)

    def sent(
        self, *, started: float, now: float, moved: int, asked: int, limit: float | None
    ) -> None:
        """A send that began at started moved bytes; it returned at now."""
        waited_out = limit is not None and moved < asked and now - started >= limit
        self._since = now - limit if waited_out and limit is not None else now


@contextmanager
def blocking(sock: socket.socket) -> Iterator[None]:
    """Make the socket blocking for the splice; the sender bounds each wait
    with SO_SNDTIMEO.

    A socket with a Python timeout is non-blocking underneath; splicing
    into it would wake up for every few hundred KiB of socket buffer. The
    kernel's send timeout keeps the bound without the wake-ups.
    """
    timeout = sock.gettimeout()
    saved = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, len(timeval(None)))
    sock.settimeout(None)
    try:
        yield
    finally:
        sock.settimeout(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, saved)
