"""Process-wide locks on byte ranges of images, for read-modify-write.

With O_DIRECT a write of part of a block (sector) is a read of the whole
block, a change in memory and a write of the whole block back. Two such
writes of one block from two connections (each has a descriptor of its
own) race: the second writes back the block as it read it, without the
first one's bytes, and a write acknowledged with 200 is lost. So is an
aligned write of the block, or a zeroing of it, that lands between the read
and the write back. The rules:

1. An image is known by what the kernel calls it, not by its path: a
   regular file by (st_dev, st_ino), a block device by the device number
   it names (st_rdev), so links and several device nodes share one entry.
   The service owns one table; every backend of the process that writes
   an image holds a ``RangeLock`` from it while open.
2. Ranges are in bytes, not block numbers: two connections may see one
   file with different block sizes (the alignment probe answers 4096 for
   a file without data and 512 once there is some), and byte ranges
   conflict whatever the block size each one used.
3. A read-modify-write holds the blocks it rewrites *exclusively*. Every
   other change of the image (aligned writes, fallocate, BLKZEROOUT)
   holds its range *shared*: shared ranges never wait for each other, so
   aligned writers run in parallel as before, but never inside a block
   that is being read-modified-written. Reads take nothing.
4. A shared range also waits for an overlapping exclusive range that is
   waiting, so a stream of aligned writers cannot starve a partial one.
5. A thread holds at most one range at a time and takes a range whole or
   not at all, and a holder never waits for anything but its own storage
   syscalls: no thread waits while holding, so no cycle and no deadlock,
   in whatever order a write's head and tail blocks are taken.
6. A range is held around storage syscalls only, never across a socket
   read or anything a client controls.

``Ranges`` is the pure state (what is held, what conflicts); ``RangeLock``
adds the waiting; ``SectorLocks`` is the table.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

# The end of a range that reaches past any end of file: a write that may
# change the size of a file holds everything from its block on.
END = 2**63


class Span(NamedTuple):
    """Bytes [start, end) of an image, held shared or exclusively."""

    start: int
    end: int
    exclusive: bool

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end

    def conflicts(self, other: Span) -> bool:
        return (self.exclusive or other.exclusive) and self.overlaps(other)


def span(start: int, end: int, *, exclusive: bool) -> Span:
    if not 0 <= start < end <= END:
        raise ValueError(f"invalid range [{start}, {end})")
    return Span(start, end, exclusive)


@dataclass
class Ranges:
    """What is held on one image and who may take what (rules 3 and 4)."""

    held: list[Span] = field(default_factory=list)
    waiting: list[Span] = field(default_factory=list)

    def can_take(self, span: Span) -> bool:
        if any(span.conflicts(h) for h in self.held):
            return False
        # Rule 4: shared ranges let a waiting exclusive one go first.
        return span.exclusive or not any(span.overlaps(w) for w in self.waiting)

    def take(self, span: Span) -> None:
        assert self.can_take(span), span
        self.held.append(span)

    def release(self, span: Span) -> None:
        self.held.remove(span)

    @property
    def idle(self) -> bool:
        return not self.held and not self.waiting


class RangeLock:
    """The ranges of one image, shared by every backend that has it open."""

    def __init__(self, key: tuple[int, ...]) -> None:
        self.key = key
        self._ranges = Ranges()
        self._cond = threading.Condition(threading.Lock())

    def shared(self, start: int, end: int) -> Hold:
        return Hold(self, span(start, end, exclusive=False))

    def exclusive(self, start: int, end: int) -> Hold:
        return Hold(self, span(start, end, exclusive=True))

    def _acquire(self, span: Span) -> None:
        with self._cond:
            if not self._ranges.can_take(span):
                self._wait(span)
            self._ranges.take(span)

    def _release(self, span: Span) -> None:
        with self._cond:
            self._ranges.release(span)
            self._cond.notify_all()

    def _wait(self, span: Span) -> None:
        # Only exclusive waiters are announced: rule 4.
        if span.exclusive:
            self._ranges.waiting.append(span)
        try:
            while not self._ranges.can_take(span):
                self._cond.wait()
        finally:
            if span.exclusive:
                self._ranges.waiting.remove(span)

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._ranges.idle


class Hold:
    """A range of a RangeLock, held inside a with block.

    A class rather than a generator: every aligned write takes one.
    """

    __slots__ = ("_lock", "_span")

    def __init__(self, lock: RangeLock, span: Span) -> None:
        self._lock = lock
        self._span = span

    def __enter__(self) -> None:
        self._lock._acquire(self._span)

    def __exit__(self, *exc: object) -> None:
        self._lock._release(self._span)


def image_key(st: os.stat_result) -> tuple[int, ...]:
    """Rule 1: what names an image, whatever path it was opened by."""
    if stat.S_ISBLK(st.st_mode):
        return (st.st_rdev,)
    return (st.st_dev, st.st_ino)


class SectorLocks:
    """The process's table of range locks, one per open image.

    A lock lives while some backend has its image open; each attach is
    paired with one detach.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[tuple[int, ...], tuple[RangeLock, int]] = {}

    def attach(self, fd: int) -> RangeLock:
        key = image_key(os.fstat(fd))
        with self._lock:
            lock, users = self._locks.get(key) or (RangeLock(key), 0)
            self._locks[key] = (lock, users + 1)
            return lock

    def detach(self, lock: RangeLock) -> None:
        with self._lock:
            held, users = self._locks[lock.key]
            assert held is lock
            if users > 1:
                self._locks[lock.key] = (lock, users - 1)
            else:
                del self._locks[lock.key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._locks)
