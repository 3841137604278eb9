"""Operations: what a request does to its ticket's storage, and by which way.

Theory of operation: an HTTP handler parses a request, authorizes it and
binds its connection to the ticket; it then builds one of these operations
and runs it as a request of the ticket (``Ticket.run``): the bytes it moves
count in ``transferred``, the ticket does not expire under it, and a cancel
stops it at its next piece. Operations know storage and sockets, not HTTP.

How a download moves its bytes is chosen here, once, from what the backend
can do (the capability protocols of ``vdsm_imageio.backends``) and what the
connection can (``Capabilities``). The ways, tried in this order:

- splice from the file: a plain (unix socket) connection, a range of at
  least ``SPLICE_MIN``, a ``Spliceable`` backend whose direct I/O allows
  the range (``zerocopy.Splicer.send``);
- splice from NBD connections of our own: the same connection and range,
  a ``SpliceReaders`` backend, ``[http] nbd_splice`` (``zerocopy.Splicer.send_from``);
  passed over when no such connection opens;
- read lanes: ``[http] parallel_reads`` above 1, a range of more than two
  buffers, a backend with more than one reader (``ParallelReads``); passed
  over when the buffer pool cannot give each lane a buffer
  (``pipeline.run_lanes``);
- the double-buffered pipeline, which always works (``pipeline.run``).

A backend that is told a request's range first (``Streams``: the http
backend, one GET or PUT to its host for the whole range) is told it before
a download's head goes out, so a refusal there is still the reply's status,
and around an upload's body, which it then flushes itself if asked. A
backend that relays to the daemon holding the image (``Relayed``) has that
daemon compute checksums where the data is, and what OPTIONS offers for it
is at most what that daemon offers (``offer``).

A new backend implements the Backend protocol and the capabilities it gains
from; no handler changes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from . import checksum, checksum_io, pipeline, zerocopy
from .backends import (
    Backend,
    DirtyExtent,
    LimitedWriters,
    Relayed,
    Spliceable,
    SpliceReaders,
    Streams,
    ZeroExtent,
)
from .backends.handles import Handles
from .errors import BadRequest, ImageEnded, RangeNotSatisfiable, UnsupportedContext
from .pipeline import BufferPool

# Smaller downloads are not worth a pipe and a thread.
SPLICE_MIN = 1024**2
# Zero in steps so that cancel and progress apply to huge ranges too.
ZERO_STEP = 1024**3

# Called with the bytes moved since the last call; raises to stop the operation.
Progress = Callable[[int], None]
Send = Callable[[memoryview], None]


@dataclass(frozen=True)
class Capabilities:
    """What the connection a request came on allows, and what it may use."""

    # The client's socket when image data may be spliced into it (plain, not TLS).
    splice: socket.socket | None
    # Reads in flight per download ([http] parallel_reads).
    lanes: int
    # Whether NBD downloads may splice through connections of our own.
    nbd_splice: bool
    # I/O buffers shared by every connection.
    pool: BufferPool
    # The connection's pipes and helper threads for splicing, kept between
    # its requests (None: a download makes its own).
    splicer: zerocopy.Splicer | None = None


class Body(Protocol):
    """A request body being received: reads never go past its end."""

    @property
    def done(self) -> bool: ...

    def readinto(self, buf: memoryview) -> int: ...


def max_writers(backend: Backend, limit: int) -> int:
    """As many writers as are safe on this storage, at most limit: all on
    files (the sector lock makes partial-sector writes safe across
    connections) and on NBD servers that promise multi-conn consistency."""
    if isinstance(backend, LimitedWriters):
        own = backend.max_writers()
        if own is not None:
            return min(limit, own)
    return limit


@dataclass(frozen=True)
class Offer:
    """What OPTIONS advertises for a ticket's image."""

    features: list[str]
    max_readers: int
    max_writers: int
    size: int


def offer(
    backend: Backend, *, features: Sequence[str], readers: int, writers: int, size: int
) -> Offer:
    """What this service offers for an image on backend, given the features,
    connection limits and size it offers for any image (writers 0: none).

    A request on a relayed image ends at the daemon that holds it: the
    offer is no more than that daemon's (features, limits, size). Its unix
    socket is in no offer: a client of ours cannot reach it.
    """
    writers = max_writers(backend, writers) if writers else 0
    if not isinstance(backend, Relayed):
        return Offer(list(features), readers, writers, size)
    host = backend.host_options()
    return Offer(
        features=[f for f in features if f in host.features],
        max_readers=min(readers, host.max_readers),
        max_writers=min(writers, host.max_writers),
        size=min(size, backend.size),
    )


class Download:
    """Send [start, start + length) of the image to the client: begin (the
    response head) first, then every byte through send or the socket."""

    def __init__(
        self,
        handles: Handles,
        start: int,
        length: int,
        caps: Capabilities,
        *,
        begin: Callable[[], None],
        send: Send,
    ) -> None:
        self.start = start
        self.length = length
        self._handles = handles
        self._caps = caps
        self._begin = begin
        self._send = send
        self._ways = self._plan(handles.backend)

    def _plan(self, backend: Backend) -> list[Callable[[Progress], bool]]:
        """The ways to try in turn; each says whether it sent the range."""
        ways: list[Callable[[Progress], bool]] = []
        sock = self._caps.splice
        if sock is not None and self.length >= SPLICE_MIN:
            if isinstance(backend, Spliceable):
                fd = backend.splice_source(self.start, self.length)
                if fd is not None:
                    return [partial(self._splice_file, fd, sock)]
            elif isinstance(backend, SpliceReaders) and self._caps.nbd_splice:
                ways.append(partial(self._splice_readers, backend, sock))
        if self._caps.lanes > 1 and self.length > 2 * self._caps.pool.size:
            ways.append(self._read_lanes)
        ways.append(self._pipeline)
        return ways

    def run(self, progress: Progress) -> None:
        with self._told():
            self._begin()
            for way in self._ways:
                if way(progress):
                    return

    def _told(self) -> AbstractContextManager[None]:
        """The range told to a backend that streams it (its storage is
        asked before the head goes out); nothing for the others."""
        backend = self._handles.backend
        if isinstance(backend, Streams):
            return backend.reading(self.start, self.length)
        return nullcontext()

    def _splicer(self) -> AbstractContextManager[zerocopy.Splicer]:
        splicer = self._caps.splicer
        return nullcontext(splicer) if splicer is not None else zerocopy.Splicer()

    def _splice_file(self, fd: int, sock: socket.socket, progress: Progress) -> bool:
        with self._splicer() as splicer:
            splicer.send(fd, self.start, self.length, sock, progress, lanes=self._caps.lanes)
        return True

    def _splice_readers(
        self, backend: SpliceReaders, sock: socket.socket, progress: Progress
    ) -> bool:
        readers = self._handles.splice_readers(backend, self._caps.lanes)
        try:
            if not readers:
                return False
            fills: list[zerocopy.Fill] = [rd.fill for rd in readers]
            with self._splicer() as splicer:
                splicer.send_from(fills, self.start, self.length, sock, progress)
            return True
        finally:
            for reader in readers:
                reader.close()

    def _read_lanes(self, progress: Progress) -> bool:
        readers = self._handles.readers(self._caps.lanes)
        end = self.start + self.length
        return len(readers) > 1 and pipeline.run_lanes(
            self._caps.pool,
            [_read_exactly(r, end) for r in readers],
            partial(self._send_counted, progress),
            self.start,
            self.length,
        )

    def _pipeline(self, progress: Progress) -> bool:
        backend = self._handles.backend
        end = self.start + self.length
        offset = self.start

        def read(buf: memoryview) -> int:
            nonlocal offset
            want = min(len(buf), end - offset)
            if want == 0:
                return 0
            n = backend.readinto(offset, buf[:want])
            if n == 0:
                raise ImageEnded(offset=offset, end=end)
            offset += n
            return n

        pool = self._caps.pool
        send = partial(self._send_counted, progress)
        pipeline.run(pool, read, send, threaded_side="produce", single=self.length <= pool.size)
        return True

    def _send_counted(self, progress: Progress, data: memoryview) -> None:
        self._send(data)
        progress(len(data))


@dataclass(kw_only=True)
class Upload:
    """Write a request body at start, never past its range (length, or the
    ticket's size when the body's length is unknown), then flush if asked."""

    backend: Backend
    body: Body
    start: int
    declared: int | None
    size: int
    flush: bool
    pool: BufferPool

    @property
    def length(self) -> int:
        return self.declared if self.declared is not None else self.size - self.start

    def run(self, progress: Progress) -> None:
        backend, declared = self.backend, self.declared
        if isinstance(backend, Streams) and declared is not None:
            # The whole body is one write to the storage, flushed there if
            # asked; a body of unknown length goes the plain way.
            with backend.writing(self.start, declared, flush=self.flush):
                self._check(self._receive(progress))
            return
        self._check(self._receive(progress))
        if self.flush:
            backend.flush()

    def _check(self, written: int) -> None:
        if self.declared is not None and written != self.declared:
            raise BadRequest(
                field="body", reason=f"got {written} bytes, Content-Range says {self.declared}"
            )

    def _receive(self, progress: Progress) -> int:
        body, backend, declared = self.body, self.backend, self.declared
        end = self.start + self.length
        received = written = self.start

        def recv(buf: memoryview) -> int:
            nonlocal received
            if body.done:
                return 0
            # One byte more than allowed tells a long body from an exact one.
            n = body.readinto(buf[: min(len(buf), end - received + 1)])
            if received + n > end:
                # Only a chunked body can get here: its length was not known.
                if declared is None:
                    raise RangeNotSatisfiable(size=self.size)
                raise BadRequest(
                    field="body", reason=f"longer than the {declared} bytes of Content-Range"
                )
            received += n
            return n

        def write(data: memoryview) -> None:
            nonlocal written
            backend.write(written, data)
            written += len(data)
            progress(len(data))

        single = declared is not None and declared <= self.pool.size
        pipeline.run(self.pool, recv, write, threaded_side="consume", single=single)
        return written - self.start


@dataclass(kw_only=True)
class Zero:
    """Make [start, start + length) read as zeros (punching holes on a
    sparse ticket), then flush if asked."""

    backend: Backend
    start: int
    length: int
    punch_hole: bool
    flush: bool

    def run(self, progress: Progress) -> None:
        offset, end = self.start, self.start + self.length
        while offset < end:
            step = min(ZERO_STEP, end - offset)
            self.backend.zero(offset, step, punch_hole=self.punch_hole)
            offset += step
            progress(step)
        if self.flush:
            self.backend.flush()


@dataclass
class Flush:
    """Make what was written durable; moves no data."""

    backend: Backend
    start: int = 0
    length: int = 0

    def run(self, progress: Progress) -> None:
        self.backend.flush()


@dataclass(kw_only=True)
class Extents:
    """The extents of [start, start + span) for context; moves no data."""

    backend: Backend
    context: str
    start: int
    span: int
    length: int = 0

    def run(self, progress: Progress) -> list[ZeroExtent | DirtyExtent]:
        extents = list(self.backend.extents(self.context, self.start, self.span))
        # A file shorter than the ticket reads as zeros past its end.
        # Where the extents stop, not the size now: a writer may have
        # grown or cut the file since they were found.
        covered = extents[-1].start + extents[-1].length if extents else self.start
        end = self.start + self.span
        if self.context == "zero" and covered < end:
            _append_hole(extents, covered, end)
        return extents


@dataclass(kw_only=True)
class Checksum:
    """The checksum of the first length bytes (``vdsm_imageio.checksum``):
    zero blocks take a known digest, data blocks are read and hashed by
    worker threads (``vdsm_imageio.checksum_io``)."""

    handles: Handles
    length: int
    algorithm: str
    block_size: int
    zero_digest: Callable[[int], bytes]
    lanes: int
    pool: BufferPool
    start: int = 0

    def run(self, progress: Progress) -> str:
        size = self.length
        backend = self.handles.backend
        if isinstance(backend, Relayed):
            # Computed by the daemon that holds the image: the data never
            # crosses the network. Counted as a local checksum counts what
            # it read.
            digest = backend.checksum(self.algorithm, self.block_size)
            progress(size)
            return digest
        extents = _zero_extents(backend, size)
        blocks = checksum.plan(extents, size, self.block_size, checksum.BLOCK_ALIGNMENT)
        readers = self.handles.readers(self.lanes)
        lanes = self.lanes
        if checksum.BLOCK_ALIGNMENT % backend.block_size:
            # Shared readers rely on aligned reads (checksum_io's rules).
            lanes = len(readers)
        done = 0

        def account(n: int) -> None:
            # The sector padding is not image data: transferred stays <= size.
            nonlocal done
            n = min(n, size - done)
            done += n
            progress(n)

        return checksum_io.compute(
            blocks,
            new=checksum.hash_factory(self.algorithm),
            zero_digest=self.zero_digest,
            readers=[_read_exactly(r, size) for r in readers],
            pool=self.pool,
            lanes=lanes,
            progress=account,
        )


def _read_exactly(backend: Backend, end: int) -> pipeline.ReadAt:
    def read(offset: int, buf: memoryview) -> None:
        n = backend.readinto(offset, buf)
        if n != len(buf):
            raise ImageEnded(offset=offset + n, end=end)

    return read


def _zero_extents(backend: Backend, size: int) -> list[ZeroExtent | DirtyExtent]:
    try:
        return list(backend.extents("zero", 0, size))
    except UnsupportedContext:
        # No zero extents: everything is read, and the digest is the same.
        return []


def _append_hole(extents: list[ZeroExtent | DirtyExtent], start: int, end: int) -> None:
    # One hole, not two: a client counts requests by extents.
    last = extents[-1] if extents else None
    if isinstance(last, ZeroExtent) and last.hole and last.start + last.length == start:
        extents[-1] = ZeroExtent(last.start, end - last.start, zero=True, hole=True)
    else:
        extents.append(ZeroExtent(start, end - start, zero=True, hole=True))
