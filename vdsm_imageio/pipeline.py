"""Overlapping storage I/O with socket I/O: double buffering.

Theory of operation: a transfer is a loop of "fill a buffer" (produce) and
"drain it" (consume): for a download, produce reads storage and consume
sends to the socket; for an upload, produce receives from the socket and
consume writes storage. Run one after the other, the two waits add up;
run in two threads with two buffers, the slower side sets the pace, and
both storage (O_DIRECT reads and writes release the GIL) and sockets keep
busy. The helper thread lives for one request; a request that fits in one
buffer runs without it, so small random I/O pays nothing.

Buffers come from a pool shared by every connection, so memory stays
bounded however many connections are open: a request waits for a buffer
when the pool is empty, and runs single-buffered when only one is free.

Rules:
- Errors on either side stop both; the first error is raised in the
  request's thread, the helper thread is always joined before returning.
- Every buffer taken from the pool is returned, on success and on error.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Callable

Produce = Callable[[memoryview], int]
Consume = Callable[[memoryview], None]
CheckAlive = Callable[[], None]

# How often a request waiting for a pool buffer checks it was not canceled.
WAIT_SLICE = 0.5


class BufferPool:
    """Page-aligned buffers (as O_DIRECT needs) shared by all connections."""

    def __init__(self, size: int, count: int) -> None:
        if count < 1:
            raise ValueError("a buffer pool needs at least one buffer")
        self.size = size
        self._count = count
        self._free: list[memoryview] = []
        self._maps: list[mmap.mmap] = []
        self._cond = threading.Condition()

    def acquire(self, check_alive: CheckAlive) -> memoryview:
        """A buffer, waiting for one if all are in use."""
        with self._cond:
            while True:
                buf = self._take_locked()
                if buf is not None:
                    return buf
                check_alive()
                self._cond.wait(WAIT_SLICE)

    def try_acquire(self) -> memoryview | None:
        with self._cond:
            return self._take_locked()

    def release(self, buf: memoryview) -> None:
        with self._cond:
            self._free.append(buf)
            self._cond.notify()

    def allocated(self) -> int:
        with self._cond:
            return len(self._maps)

    def _take_locked(self) -> memoryview | None:
        if self._free:
            return self._free.pop()
        if len(self._maps) < self._count:
            m = mmap.mmap(-1, self.size)
            self._maps.append(m)
            return memoryview(m)
        return None


def run(pool: BufferPool, produce: Produce, consume: Consume, *,
        threaded_side: str, check_alive: CheckAlive, single: bool = False) -> None:
    """Move data until produce returns 0.

    threaded_side names the side ("produce" or "consume") that runs in the
    helper thread: the side that does storage I/O, so the request's own
    thread keeps the socket. single=True (the request fits one buffer)
    runs without a helper thread.
    """
    first = pool.acquire(check_alive)
    second = None if single else pool.try_acquire()
    try:
        if second is None:
            _sequential(first, produce, consume)
        elif threaded_side == "produce":
            _threaded_producer([first, second], produce, consume)
        else:
            _threaded_consumer([first, second], produce, consume)
    finally:
        pool.release(first)
        if second is not None:
            pool.release(second)


def _sequential(buf: memoryview, produce: Produce, consume: Consume) -> None:
    while True:
        n = produce(buf)
        if n == 0:
            return
        consume(buf[:n])


Filled = tuple[memoryview, int]


def _threaded_producer(bufs: list[memoryview], produce: Produce,
                       consume: Consume) -> None:
    # None in free stops the helper; an exception in filled is its failure.
    free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    filled: queue.SimpleQueue[Filled | BaseException] = queue.SimpleQueue()
    for b in bufs:
        free.put(b)

    def helper() -> None:
        try:
            while (buf := free.get()) is not None:
                n = produce(buf)
                filled.put((buf, n))
                if n == 0:
                    return
        except BaseException as e:
            filled.put(e)

    thread = threading.Thread(target=helper, name="io-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = filled.get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            if n == 0:
                return
            consume(buf[:n])
            free.put(buf)
    finally:
        free.put(None)
        thread.join()


def _threaded_consumer(bufs: list[memoryview], produce: Produce,
                       consume: Consume) -> None:
    # None in either queue means stop; the helper's failure is kept aside.
    free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    filled: queue.SimpleQueue[Filled | None] = queue.SimpleQueue()
    failure: list[BaseException] = []
    for b in bufs:
        free.put(b)

    def helper() -> None:
        try:
            while (item := filled.get()) is not None:
                buf, n = item
                consume(buf[:n])
                free.put(buf)
        except BaseException as e:
            failure.append(e)
            # Wake the request's thread if it waits for a free buffer.
            free.put(None)

    thread = threading.Thread(target=helper, name="io-consumer", daemon=True)
    thread.start()
    try:
        while (buf := free.get()) is not None:
            n = produce(buf)
            if n == 0:
                break
            filled.put((buf, n))
    finally:
        filled.put(None)
        thread.join()
    if failure:
        raise failure[0]
