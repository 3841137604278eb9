"""The storage side of a transfer: one protocol, several backends.

A backend is opened per HTTP connection for one ticket and owned by that
connection. I/O is positional (no shared file position), so the handlers
never seek. Buffers passed to ``readinto`` and ``write`` come from
``Backend.buffer()`` when the caller wants the fast path: they are aligned
for O_DIRECT; any other buffer works too, at the cost of a copy.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Errors meaning "the storage is full": the backends raise StorageFull for
# these, which the HTTP edge answers with 507, not a 500 "see the log".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class ZeroExtent:
    start: int
    length: int
    zero: bool
    hole: bool

    def to_json(self) -> dict[str, object]:
        return {"start": self.start, "length": self.length, "zero": self.zero, "hole": self.hole}


@dataclass(frozen=True)
class DirtyExtent:
    start: int
    length: int
    dirty: bool
    zero: bool

    def to_json(self) -> dict[str, object]:
        return {"start": self.start, "length": self.length, "dirty": self.dirty, "zero": self.zero}


class Backend(Protocol):
    """What the HTTP handlers need from storage."""

    @property
    def size(self) -> int:
        """Size of the image in bytes."""

    @property
    def block_size(self) -> int:
        """Alignment of offsets and lengths for direct I/O (1 when none)."""

    def buffer(self, size: int) -> memoryview:
        """A writable buffer of ``size`` bytes aligned for this backend."""

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Read up to len(buf) bytes at offset; 0 only at end of image."""

    def write(self, offset: int, buf: memoryview) -> int:
        """Write all of buf at offset; returns len(buf)."""

    def zero(self, offset: int, length: int, *, punch_hole: bool) -> None:
        """Make the range read as zeros, deallocating it if punch_hole."""

    def flush(self) -> None:
        """Make written data durable (fsync / NBD flush)."""

    def extents(self, context: str, start: int, length: int) -> Iterator[ZeroExtent | DirtyExtent]:
        """Extents covering [start, start+length) for context zero or dirty."""

    def close(self) -> None:
        """Release the backend's resources; idempotent."""


@runtime_checkable
class Spliceable(Protocol):
    """A backend whose data can be spliced to a socket (vdsm_imageio.zerocopy)."""

    def splice_source(self, offset: int, length: int) -> int | None:
        """An O_DIRECT fd for this aligned range, or None to copy instead."""


@runtime_checkable
class LimitedWriters(Protocol):
    """A backend on which not every number of concurrent writers is safe."""

    def max_writers(self) -> int | None:
        """How many connections may write the image at once; None for as
        many as the service allows."""


@runtime_checkable
class ParallelReads(Protocol):
    """A backend that reads faster with several reads in flight (NBD)."""

    def open_reader(self) -> Backend | None:
        """Another handle on the same image, for reads only, or None when
        reads through it could miss this handle's writes; the caller closes it."""


class SpliceReader(Protocol):
    """A connection whose reads go into a pipe without passing through us."""

    def fill(self, wfd: int, offset: int, length: int) -> int:
        """Put exactly length bytes of the image at offset into the pipe wfd;
        returns length."""

    def close(self) -> None:
        """Release the connection; idempotent."""


@runtime_checkable
class SpliceReaders(Protocol):
    """A backend that can open connections for spliced reads (NBD)."""

    def open_splice_reader(self) -> SpliceReader | None:
        """A new connection for spliced reads, or None when reads through
        another connection could miss this handle's writes."""


@dataclass(frozen=True)
class HostOptions:
    """What another daemon's OPTIONS advertised for an image (proxy mode)."""

    features: frozenset[str]
    max_readers: int
    max_writers: int
    size: int | None
    unix_socket: str | None


@runtime_checkable
class Relayed(Protocol):
    """A backend that relays to the daemon holding the image (http)."""

    def host_options(self) -> HostOptions:
        """What that daemon advertises for the image; the proxy offers no
        more (features, limits) and never its unix socket."""

    def checksum(self, algorithm: str, block_size: int) -> str:
        """The image's checksum (``vdsm_imageio.checksum``'s digest) computed
        by that daemon, where the data is."""


@runtime_checkable
class Streams(Protocol):
    """A backend that moves a request's whole range in one exchange with its
    storage when told the range first (http: one GET or PUT to the host)."""

    def reading(self, start: int, length: int) -> AbstractContextManager[None]:
        """Inside, readinto calls read [start, start + length) in order.
        Storage errors are raised on entry, before a reply's head goes out."""

    def writing(self, start: int, length: int, *, flush: bool) -> AbstractContextManager[None]:
        """Inside, write calls fill [start, start + length) in order; a clean
        exit returns once the storage has them, flushed if flush."""


@runtime_checkable
class Abortable(Protocol):
    """A backend whose blocking I/O another thread can stop (a cancel)."""

    def abort(self) -> None:
        """Make the I/O under way fail now, and every later I/O; any thread."""
