"""Downloads that never copy image data through user space.

Theory of operation: on a plain (unix socket) connection, a download from a
file opened with O_DIRECT moves as ``splice(file -> pipe)`` in helper
threads and ``splice(pipe -> socket)`` in the request's thread. Since Linux
6.5 a splice from an O_DIRECT file reads with direct I/O into pages the
pipe owns (no page cache, so the shared-storage rules hold), and a unix
stream socket takes pipe pages by reference (MSG_SPLICE_PAGES): the daemon
spends its CPU on system calls, not on copying.

The range is cut into segments of one pipe's capacity (1 MiB without
CAP_SYS_RESOURCE), dealt round-robin to ``LANES`` pipes, each filled by its
own helper thread: while one segment goes to the socket, the next ones are
being read, so the storage always has reads queued. The request's thread
takes segment k from pipe k % LANES, which keeps the bytes in order; a full
pipe is the bound on what each helper reads ahead.

``send`` fills the pipes from a file; ``send_from`` takes one fill
function per lane, which is how NBD replies are spliced from the NBD
server's socket (``vdsm_imageio.backends.nbdwire``).

Stopping: the request's thread closes the pipes' read ends on error, so a
helper blocked on a full pipe fails with EPIPE; a helper closes its write
end when it stops, so the request's thread sees end of data early and
raises the helper's error, or ImageEnded when the helper had none: a body
shorter than its Content-Length always fails the request, which closes
the connection.

A client that stops reading is dropped when it has taken no byte for the
socket's timeout (the ticket's inactivity timeout), counted over the whole
stall and not per splice call: see ``Stall``.

Direct I/O needs aligned offsets and lengths; callers use this path only
for aligned ranges and fall back to the buffered pipeline otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import BackendError, ImageEnded, PeerClosed
from .sockets import set_kernel_timeout, timeval

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024**2
# Pipes (and reads) in flight per download: one read in flight leaves the
# storage idle while the previous piece goes to the socket.
LANES = 2


def available() -> bool:
    return hasattr(os, "splice")


# Puts exactly length bytes of the image at offset into the pipe wfd.
Fill = Callable[[int, int, int], None]


def send(
    src_fd: int,
    offset: int,
    length: int,
    sock: socket.socket,
    progress: Callable[[int], None],
    lanes: int = LANES,
) -> None:
    """Send length bytes of src_fd at offset to sock; progress(n) per piece.

    The socket's timeout bounds each wait for the client to take more data.
    """

    def fill(wfd: int, pos: int, n: int) -> None:
        end = pos + n
        while pos < end:
            done = os.splice(src_fd, wfd, end - pos, offset_src=pos)
            if done == 0:
                # The file is shorter than when the request began.
                raise ImageEnded(offset=pos, end=offset + length)
            pos += done

    send_from([fill] * lanes, offset, length, sock, progress)


def fill_from_stream(fd: int, wfd: int, length: int) -> None:
    """Move exactly length bytes from a stream (a socket) into the pipe wfd."""
    while length:
        n = os.splice(fd, wfd, length)
        if n == 0:
            raise OSError(errno.ECONNRESET, "the server closed the connection")
        length -= n


def send_from(
    fills: list[Fill],
    offset: int,
    length: int,
    sock: socket.socket,
    progress: Callable[[int], None],
) -> None:
    """Send length bytes at offset to sock, segment k filled by fills[k % lanes]."""
    lanes = len(fills)
    pipes: list[tuple[int, int]] = []
    try:
        for _ in range(lanes):
            pipes.append(os.pipe2(os.O_CLOEXEC))
        segment = min(_grow(wfd) for _, wfd in pipes)
    except OSError:
        for rfd, wfd in pipes:
            os.close(rfd)
            os.close(wfd)
        raise
    count = -(-length // segment)
    failure: list[Exception] = []

    def lane_loop(lane: int, wfd: int) -> None:
        try:
            for k in range(lane, count, lanes):
                pos = offset + k * segment
                fills[lane](wfd, pos, min(segment, offset + length - pos))
        except OSError as e:
            if e.errno != errno.EPIPE:
                failure.append(BackendError(reason=e.strerror or str(e)))
        except Exception as e:
            # Raised again in the request's thread, which owns the reply
            # and logs what it did not expect.
            failure.append(e)
        finally:
            os.close(wfd)

    helpers = []
    for lane, (_, wfd) in enumerate(pipes):
        if lane < count:
            helpers.append(
                threading.Thread(target=lane_loop, args=(lane, wfd), name="io-splice", daemon=True)
            )
        else:
            os.close(wfd)
    for helper in helpers:
        helper.start()
    try:
        _drain([rfd for rfd, _ in pipes], segment, sock, offset, length, progress)
    except ImageEnded:
        # A lane ended early; its helper's error says why, if it has one.
        if not failure:
            raise
    finally:
        for rfd, _ in pipes:
            os.close(rfd)
        for helper in helpers:
            helper.join()
    if failure:
        raise failure[0]


def _drain(
    rfds: list[int],
    segment: int,
    sock: socket.socket,
    offset: int,
    length: int,
    progress: Callable[[int], None],
) -> None:
    timeout = sock.gettimeout()
    left = length
    with _blocking(sock):
        stall = Stall(timeout, time.monotonic())
        current: float | None = -1.0
        k = 0
        while left:
            # Segment k waits in the pipe of lane k % lanes.
            rfd = rfds[k % len(rfds)]
            want = min(segment, left)
            while want:
                limit = stall.wait_limit(time.monotonic())
                if limit is not None and limit <= 0:
                    raise PeerClosed(reason=f"timed out, no data taken for {timeout:g} seconds")
                if limit != current:
                    set_kernel_timeout(sock, socket.SO_SNDTIMEO, limit)
                    current = limit
                started = time.monotonic()
                try:
                    n = os.splice(rfd, sock.fileno(), want)
                except BlockingIOError:
                    # SO_SNDTIMEO expired with nothing taken; the stall
                    # decides whether to wait more.
                    continue
                except OSError as e:
                    raise PeerClosed(reason=e.strerror or str(e)) from None
                if n == 0:
                    # The lane's helper closed its pipe before the range
                    # ended: a short body must never pass for a whole one.
                    raise ImageEnded(offset=offset + length - left, end=offset + length)
                stall.sent(started=started, now=time.monotonic(), moved=n, asked=want, limit=limit)
                want -= n
                left -= n
                progress(n)
            k += 1


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
def _blocking(sock: socket.socket) -> Iterator[None]:
    """Make the socket blocking for the splice; _drain bounds each wait
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


def _grow(wfd: int) -> int:
    try:
        return fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Over /proc/sys/fs/pipe-max-size: keep the default 64 KiB.
        return fcntl.fcntl(wfd, fcntl.F_GETPIPE_SZ)
