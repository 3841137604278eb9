"""Downloads that never copy image data through user space.

Theory of operation: on a plain (unix socket) connection, a download from a
file opened with O_DIRECT moves as ``splice(file -> pipe)`` in helper
threads and ``splice(pipe -> socket)`` in the request's thread. Since Linux
6.5 a splice from an O_DIRECT file reads with direct I/O into pages the
pipe owns (no page cache, so the shared-storage rules hold), and a unix
stream socket takes pipe pages by reference (MSG_SPLICE_PAGES): the daemon
spends its CPU on system calls, not on copying.

The range is cut into segments of one pipe's capacity (1 MiB without
CAP_SYS_RESOURCE), dealt round-robin to ``lanes`` pipes, each filled by its
own helper thread: while one segment goes to the socket, the next ones are
being read, so the storage always has reads queued. The request's thread
takes segment k from pipe k % lanes, which keeps the bytes in order; a full
pipe is the bound on what each helper reads ahead.

The pipes and their helpers belong to a ``Splicer``, one per client
connection, made by its first spliced download and kept for the next ones
on the same connection: ovirt-imageio's client sends one ranged GET per
4 MiB buffer on keep-alive connections, and making pipes and starting
threads for each of those cost more CPU than the bytes. Between downloads
every pipe is empty and its helper waits for the next part.

``Splicer.send`` fills the pipes from a file; ``Splicer.send_from`` takes
one fill function per lane, which is how NBD replies are spliced from the
NBD server's socket (``vdsm_imageio.backends.nbdwire``). ``send`` and
``send_from`` of this module do one download with a splicer of its own.

Stopping: a download that fails leaves its pipes in an unknown state, so
they are not used again. The request's thread closes the pipes' read ends,
so a helper blocked on a full pipe fails with EPIPE; a helper that fails,
or whose fill put fewer bytes than asked, closes its write end, so the
request's thread sees end of data early and raises the helper's error, or
ImageEnded when the helper had none: a body shorter than its
Content-Length always fails the request, which closes the connection. The
request's thread waits for every helper to finish its part before it
returns, and then closes the pipes; the helpers end when the connection
closes the splicer.

A client that stops reading is dropped when it has taken no byte for the
socket's timeout (the ticket's inactivity timeout), counted over the whole
stall and not per splice call: see ``vdsm_imageio.stall``.

Direct I/O needs aligned offsets and lengths; callers use this path only
for aligned ranges and fall back to the buffered pipeline otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from functools import partial

from .errors import BackendError, ImageEnded, PeerClosed
from .sockets import set_kernel_timeout
from .stall import Stall, blocking

log = logging.getLogger(__name__)

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1024**2
# Pipes (and reads) in flight per download: one read in flight leaves the
# storage idle while the previous piece goes to the socket.
LANES = 2


def available() -> bool:
    return hasattr(os, "splice")


# Puts up to length bytes of the image at offset into the pipe wfd; returns
# how many it put (fewer only when the image ended).
Fill = Callable[[int, int, int], int]
Progress = Callable[[int], None]


def send(
    src_fd: int,
    offset: int,
    length: int,
    sock: socket.socket,
    progress: Progress,
    lanes: int = LANES,
) -> None:
    """Send length bytes of src_fd at offset to sock; progress(n) per piece.

    The socket's timeout bounds each wait for the client to take more data.
    """
    with Splicer() as splicer:
        splicer.send(src_fd, offset, length, sock, progress, lanes=lanes)


def send_from(
    fills: list[Fill], offset: int, length: int, sock: socket.socket, progress: Progress
) -> None:
    """Send length bytes at offset to sock, segment k filled by fills[k % lanes]."""
    with Splicer() as splicer:
        splicer.send_from(fills, offset, length, sock, progress)


def fill_from_file(src_fd: int, wfd: int, pos: int, length: int) -> int:
    """Move length bytes of the file at pos into the pipe wfd; fewer only at
    the end of the file."""
    done = 0
    while done < length:
        n = os.splice(src_fd, wfd, length - done, offset_src=pos + done)
        if n == 0:
            # The file is shorter than when the request began.
            break
        done += n
    return done


def fill_from_stream(fd: int, wfd: int, length: int) -> int:
    """Move exactly length bytes from a stream (a socket) into the pipe wfd."""
    left = length
    while left:
        n = os.splice(fd, wfd, left)
        if n == 0:
            raise OSError(errno.ECONNRESET, "the server closed the connection")
        left -= n
    return length


class Splicer:
    """The pipes and helper threads of one connection's spliced downloads.

    Used by one thread at a time (the connection's); ``close`` ends the
    helpers and closes the pipes.
    """

    def __init__(self) -> None:
        self._lanes: list[_Lane] = []

    def __enter__(self) -> Splicer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        src_fd: int,
        offset: int,
        length: int,
        sock: socket.socket,
        progress: Progress,
        *,
        lanes: int = LANES,
    ) -> None:
        """Send length bytes of the file src_fd at offset to sock."""
        self.send_from([partial(fill_from_file, src_fd)] * lanes, offset, length, sock, progress)

    def send_from(
        self,
        fills: list[Fill],
        offset: int,
        length: int,
        sock: socket.socket,
        progress: Progress,
    ) -> None:
        """Send length bytes at offset to sock, segment k filled by fills[k % lanes]."""
        lanes = self._ready(len(fills))
        segment = min(lane.capacity for lane in lanes)
        count = -(-length // segment)
        busy = lanes[:count]
        for i, lane in enumerate(busy):
            part = _Part(fills[i], i, len(lanes), count, segment, offset, length)
            lane.start(part)
        try:
            _drain([lane.rfd for lane in lanes], segment, sock, offset, length, progress)
        except _Ended as e:
            # A lane ended early; its helper's error says why, if it has one.
            # Later lanes may have failed too (a file that shrank): the
            # lane the body stopped at knows the first missing byte.
            stopped = (e.position - offset) // segment % len(lanes)
            errors = self._stop(busy[stopped : stopped + 1] + busy)
            if errors:
                raise errors[0] from None
            # A short body must never pass for a whole one.
            raise ImageEnded(offset=e.position, end=offset + length) from None
        except BaseException:
            # The request's error (the client, a cancel) wins over the
            # helpers' EPIPE.
            self._stop(busy)
            raise
        errors = [e for e in (lane.wait() for lane in busy) if e is not None]
        if errors:
            self.close()
            raise errors[0]

    def _ready(self, count: int) -> list[_Lane]:
        try:
            while len(self._lanes) < count:
                self._lanes.append(_Lane(len(self._lanes)))
        except (OSError, RuntimeError):
            self.close()
            raise
        return self._lanes[:count]

    def _stop(self, busy: list[_Lane]) -> list[Exception]:
        """Stop a failed download: unblock and wait for the helpers, then
        drop the pipes, whose contents nobody knows; the helpers' errors,
        in the order of busy (a lane may come twice: it counts once)."""
        lanes = list(dict.fromkeys(busy))
        for lane in lanes:
            lane.close_read()
        errors = [e for e in (lane.wait() for lane in lanes) if e is not None]
        self.close()
        return errors

    def close(self) -> None:
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            lane.close()


class _Part:
    """Segments lane, lane + lanes, ... of a download, for one helper."""

    def __init__(
        self, fill: Fill, lane: int, lanes: int, count: int, segment: int, offset: int, length: int
    ) -> None:
        self.fill = fill
        self.segments = range(lane, count, lanes)
        self.segment = segment
        self.offset = offset
        self.end = offset + length

    def run(self, wfd: int) -> None:
        for k in self.segments:
            pos = self.offset + k * self.segment
            want = min(self.segment, self.end - pos)
            put = self.fill(wfd, pos, want)
            if put != want:
                raise ImageEnded(offset=pos + put, end=self.end)


class _Lane:
    """One pipe and the helper thread that fills it, part after part."""

    def __init__(self, index: int) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_CLOEXEC)
        try:
            self.capacity = _grow(self.wfd)
            self._parts: queue.SimpleQueue[_Part | None] = queue.SimpleQueue()
            self._results: queue.SimpleQueue[Exception | None] = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._serve, name=f"io-splice-{index}", daemon=True
            )
            self._thread.start()
        except BaseException:
            os.close(self.rfd)
            os.close(self.wfd)
            raise

    def start(self, part: _Part) -> None:
        self._parts.put(part)

    def wait(self) -> Exception | None:
        """Wait for the helper to finish the part it was given; its error."""
        return self._results.get()

    def close_read(self) -> None:
        if self.rfd >= 0:
            os.close(self.rfd)
            self.rfd = -1

    def close(self) -> None:
        """End the helper (idle: it finished its part) and close the pipe."""
        self._parts.put(None)
        self._thread.join()
        self.close_read()
        self._close_write()

    def _close_write(self) -> None:
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1

    def _serve(self) -> None:
        while (part := self._parts.get()) is not None:
            self._results.put(self._run(part))

    def _run(self, part: _Part) -> Exception | None:
        try:
            part.run(self.wfd)
            return None
        except OSError as e:
            # The request's thread must not wait for bytes that never come.
            self._close_write()
            if e.errno == errno.EPIPE:
                # It stopped reading: its own error says why.
                return None
            return BackendError(reason=e.strerror or str(e))
        except Exception as e:
            # Raised again in the request's thread, which owns the reply
            # and logs what it did not expect.
            self._close_write()
            return e


class _Ended(Exception):
    """A pipe ended before its segment: the body stops at position."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


def _drain(
    rfds: list[int],
    segment: int,
    sock: socket.socket,
    offset: int,
    length: int,
    progress: Progress,
) -> None:
    timeout = sock.gettimeout()
    left = length
    with blocking(sock):
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
                    # The lane's helper closed its pipe before the range ended.
                    raise _Ended(offset + length - left)
                stall.sent(started=started, now=time.monotonic(), moved=n, asked=want, limit=limit)
                want -= n
                left -= n
                progress(n)
            k += 1


def _grow(wfd: int) -> int:
    try:
        return fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Over /proc/sys/fs/pipe-max-size: keep the default 64 KiB.
        return fcntl.fcntl(wfd, fcntl.F_GETPIPE_SZ)
