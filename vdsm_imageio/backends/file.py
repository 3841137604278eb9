"""The file backend: regular files and block devices.

Images live on shared storage, so all I/O bypasses the page cache
(O_DIRECT): a cached block may be stale after another host wrote the volume,
and streaming a whole disk through the cache evicts everything else. The
alignment this needs is handled by ``aligned``; file systems without direct
I/O get buffered I/O and a warning.

Zeroing tries the cheapest method first and remembers what the storage
refused, so each connection probes a method at most once.

Every change of the image holds a range of the image's lock from the
service's ``SectorLocks`` (see ``sectorlock``): ``aligned`` takes them for
writes; zeroing here takes them around fallocate and BLKZEROOUT (shared)
and around growing the file (exclusive, to the end of any file).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterator

from vdsm_imageio import directio
from vdsm_imageio.backends import NO_SPACE_ERRNOS, DirtyExtent, ZeroExtent
from vdsm_imageio.backends.aligned import SCRATCH_SIZE, AlignedIO
from vdsm_imageio.backends.sectorlock import END, RangeLock, SectorLocks
from vdsm_imageio.directio import round_down, round_up
from vdsm_imageio.errors import BackendError, StorageFull, StorageReadOnly, UnsupportedContext

log = logging.getLogger(__name__)

_OPEN_FLAGS = {"r": os.O_RDONLY, "rw": os.O_RDWR}

_PUNCH_HOLE = directio.FALLOC_FL_PUNCH_HOLE | directio.FALLOC_FL_KEEP_SIZE
_ZERO_RANGE = directio.FALLOC_FL_ZERO_RANGE


def open_file(path: str, *, mode: str, sparse: bool, locks: SectorLocks) -> FileBackend:
    """Open a regular file or block device for a transfer.

    mode is "r" or "rw". sparse allows zero() to deallocate: without it,
    a preallocated volume stays allocated even when punch_hole is asked.
    locks is the process's table: every backend of one image must share it.
    """
    if mode not in _OPEN_FLAGS:
        raise ValueError(f"mode must be 'r' or 'rw', not {mode!r}")
    try:
        fd, block_size = directio.open_aligned(path, _OPEN_FLAGS[mode])
    except OSError as e:
        log.error("OPEN failed path=%s mode=%s error=%s", path, mode, e)
        raise BackendError(reason=f"open failed: {_strerror(e)}") from e
    try:
        device_size = _device_size(fd)
        ranges = locks.attach(fd)
    except BaseException:
        log.error("OPEN failed path=%s mode=%s", path, mode)
        os.close(fd)
        raise
    if block_size == 1:
        log.warning("OPEN without direct I/O, the file system refuses it path=%s", path)
    log.info(
        "OPEN path=%s mode=%s sparse=%s device=%s block_size=%d",
        path,
        mode,
        sparse,
        device_size is not None,
        block_size,
    )
    return FileBackend(
        fd,
        path=path,
        writable=mode == "rw",
        sparse=sparse,
        block_size=block_size,
        device_size=device_size,
        locks=locks,
        ranges=ranges,
    )


def _device_size(fd: int) -> int | None:
    """Size of a block device, None for a regular file."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISBLK(mode):
            return directio.device_size(fd)
    except OSError as e:
        raise BackendError(reason=f"open failed: {_strerror(e)}") from e
    if not stat.S_ISREG(mode):
        raise BackendError(reason="not a regular file or block device")
    return None


class FileBackend:
    """A regular file or a block device; owned by one connection."""

    def __init__(
        self,
        fd: int,
        *,
        path: str,
        writable: bool,
        sparse: bool,
        block_size: int,
        device_size: int | None,
        locks: SectorLocks,
        ranges: RangeLock,
    ) -> None:
        self._fd = fd
        self._path = path
        self._writable = writable
        self._sparse = sparse
        self._block_size = block_size
        self._device_size = device_size
        self._locks = locks
        self._ranges = ranges
        self._io = AlignedIO(
            fd, block_size=block_size, regular_file=device_size is None, ranges=ranges
        )
        self._zeros: memoryview | None = None
        self._unsupported: set[str] = set()
        self._used: set[str] = set()

    def __enter__(self) -> FileBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def block_size(self) -> int:
        return self._block_size

    def fileno(self) -> int:
        """The open descriptor, for checks on what was actually opened."""
        return self._checked_fd()

    @property
    def direct(self) -> bool:
        return self._block_size > 1

    @property
    def is_device(self) -> bool:
        return self._device_size is not None

    @property
    def size(self) -> int:
        if self._device_size is not None:
            return self._device_size
        with self._errors("stat", 0, 0):
            return os.fstat(self._checked_fd()).st_size

    def buffer(self, size: int) -> memoryview:
        return directio.aligned_buffer(size, self._block_size)

    def readinto(self, offset: int, buf: memoryview) -> int:
        self._checked_fd()
        with self._errors("read", offset, len(buf)):
            return self._io.readinto(offset, buf)

    def write(self, offset: int, buf: memoryview) -> int:
        self._check_writable("write")
        with self._errors("write", offset, len(buf)):
            self._io.write(offset, buf)
        return len(buf)

    def zero(self, offset: int, length: int, *, punch_hole: bool) -> None:
        self._check_writable("zero")
        if length == 0:
            return
        with self._errors("zero", offset, length):
            if self._device_size is not None:
                self._zero_device(offset, length, self._device_size)
            else:
                self._zero_file(offset, length, punch=punch_hole and self._sparse)

    def splice_source(self, offset: int, length: int) -> int | None:
        """The fd to splice [offset, offset+length) from, if direct I/O allows."""
        bs = self._block_size
        if bs <= 1 or offset % bs or length % bs:
            return None
        return self._checked_fd()

    def flush(self) -> None:
        fd = self._checked_fd()
        with self._errors("flush", 0, 0):
            os.fsync(fd)

    def extents(self, context: str, start: int, length: int) -> Iterator[ZeroExtent | DirtyExtent]:
        if context == "dirty":
            raise UnsupportedContext(
                context=context,
                reason="dirty extents need a dirty ticket on an nbd backend",
            )
        if context != "zero":
            raise UnsupportedContext(context=context, reason="unknown context")
        if start < 0 or length < 0:
            raise ValueError(f"negative start={start} or length={length}")
        end = min(start + length, self.size)
        if start >= end:
            return iter(())
        if self._device_size is not None:
            return iter([ZeroExtent(start, end - start, zero=False, hole=False)])
        with self._errors("extents", start, length):
            return iter(file_runs(_seeker(self._checked_fd(), end), start, end))

    def close(self) -> None:
        if self._fd != -1:
            fd, self._fd = self._fd, -1
            self._zeros = None
            self._locks.detach(self._ranges)
            os.close(fd)

    # Zeroing.

    def _zero_file(self, offset: int, length: int, *, punch: bool) -> None:
        end = offset + length
        if punch and self._fallocate("punch_hole", _PUNCH_HOLE, offset, length):
            self._grow(end)  # KEEP_SIZE is mandatory with PUNCH_HOLE.
            return
        if self._fallocate("zero_range", _ZERO_RANGE, offset, length):
            return  # Without KEEP_SIZE this extends the file as well.
        if self._fallocate("punch_hole", _PUNCH_HOLE, offset, length):
            if not self._fallocate("allocate", 0, offset, length):
                self._grow(end)
            return
        self._write_zeros(offset, length)

    def _zero_device(self, offset: int, length: int, device_size: int) -> None:
        end = offset + length
        if end > device_size:
            raise OSError(errno.ENOSPC, "range ends past the end of the device")
        bs = self._block_size
        start, stop = round_up(offset, bs), round_down(end, bs)
        if start >= stop:
            self._write_zeros(offset, length)
            return
        self._write_zeros(offset, start - offset)
        if not self._try("blkzeroout", directio.zeroout, start, stop - start):
            self._write_zeros(start, stop - start)
        self._write_zeros(stop, end - stop)

    def _fallocate(self, method: str, mode: int, offset: int, length: int) -> bool:
        return self._try(
            method, lambda fd, o, n: directio.fallocate(fd, mode, o, n), offset, length
        )

    def _try(
        self,
        method: str,
        func: Callable[[int, int, int], None],
        offset: int,
        length: int,
    ) -> bool:
        """Zero with method unless the storage refused it before."""
        if method in self._unsupported:
            return False
        try:
            with self._ranges.shared(offset, offset + length):
                func(self._checked_fd(), offset, length)
        except OSError as e:
            if e.errno not in directio.UNSUPPORTED_ERRNOS:
                raise
            log.info("ZERO method=%s unsupported path=%s error=%s", method, self._path, e)
            self._unsupported.add(method)
            return False
        self._log_method(method)
        return True

    def _write_zeros(self, offset: int, length: int) -> None:
        if length == 0:
            return
        self._log_method("write")
        if self._zeros is None:
            self._zeros = self.buffer(SCRATCH_SIZE)
        done = 0
        while done < length:
            n = min(length - done, len(self._zeros))
            self._io.write(offset + done, self._zeros[:n])
            done += n

    def _grow(self, end: int) -> None:
        # Between the look and the truncate nobody may grow the file past
        # end, or the truncate would cut that off: hold everything after end.
        fd = self._checked_fd()
        with self._ranges.exclusive(end, END):
            if os.fstat(fd).st_size < end:
                os.ftruncate(fd, end)

    def _log_method(self, method: str) -> None:
        if method not in self._used:
            self._used.add(method)
            log.info("ZERO method=%s path=%s", method, self._path)

    # Plumbing.

    def _checked_fd(self) -> int:
        if self._fd == -1:
            raise ValueError("I/O on a closed backend")
        return self._fd

    def _check_writable(self, op: str) -> None:
        self._checked_fd()
        if not self._writable:
            raise StorageReadOnly(op=op)

    @contextlib.contextmanager
    def _errors(self, op: str, offset: int, length: int) -> Iterator[None]:
        # Clients get the errno text only; the path stays in the log.
        try:
            yield
        except OSError as e:
            log.error(
                "%s failed path=%s offset=%d length=%d error=%s",
                op.upper(),
                self._path,
                offset,
                length,
                e,
            )
            if e.errno in NO_SPACE_ERRNOS:
                raise StorageFull(reason=f"{op} failed: {_strerror(e)}") from e
            raise BackendError(reason=f"{op} failed: {_strerror(e)}") from e


# How often file_runs looks again at a position that a racing writer keeps
# turning from data into hole and back before it calls the rest data.
SEEK_RETRIES = 8

Seek = Callable[[int, int], int]


def file_runs(seek: Seek, start: int, end: int) -> list[ZeroExtent]:
    """Data and hole runs of [start, end): contiguous, covering it exactly,
    of positive lengths, merged.

    seek(pos, whence) is lseek(2) with SEEK_DATA or SEEK_HOLE, answering end
    when nothing follows pos. Other connections write and punch holes
    between two seeks, so one may contradict the one before: SEEK_DATA
    finds data at pos, then a punch, and SEEK_HOLE finds a hole at the same
    pos. A run is reported only once something was found after its start;
    a position that makes no progress is looked at again, and past
    SEEK_RETRIES the rest is reported as data, which is always safe: a
    client reads it instead of skipping it.
    """
    runs: list[ZeroExtent] = []
    pos, stalls = start, 0
    while pos < end:
        data = min(max(seek(pos, os.SEEK_DATA), pos), end)
        if data > pos:
            runs.append(ZeroExtent(pos, data - pos, zero=True, hole=True))
            pos = data
            continue
        hole = min(max(seek(pos, os.SEEK_HOLE), pos), end)
        if hole > pos:
            runs.append(ZeroExtent(pos, hole - pos, zero=False, hole=False))
            pos, stalls = hole, 0
            continue
        stalls += 1
        if stalls > SEEK_RETRIES:
            runs.append(ZeroExtent(pos, end - pos, zero=False, hole=False))
            break
    return merge_extents(runs)


def _seeker(fd: int, end: int) -> Seek:
    def seek(pos: int, whence: int) -> int:
        # ENXIO: no data (or hole) after pos, e.g. the file shrank under us.
        try:
            return os.lseek(fd, pos, whence)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            return end

    return seek


def merge_extents(extents: list[ZeroExtent]) -> list[ZeroExtent]:
    """Join adjacent extents of the same kind."""
    merged: list[ZeroExtent] = []
    for ext in extents:
        last = merged[-1] if merged else None
        if (
            last is not None
            and (last.zero, last.hole) == (ext.zero, ext.hole)
            and last.start + last.length == ext.start
        ):
            merged[-1] = ZeroExtent(
                last.start, last.length + ext.length, zero=ext.zero, hole=ext.hole
            )
        else:
            merged.append(ext)
    return merged


def _strerror(e: OSError) -> str:
    return e.strerror or "I/O error"
