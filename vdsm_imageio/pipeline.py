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
bounded however many connections are open: a request runs single-buffered
when only one pooled buffer is free, and with a small private buffer when
none is.

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
from typing import Literal

Produce = Callable[[memoryview], int]
Consume = Callable[[memoryview], None]
# Fill the whole buffer with the image's bytes at this offset.
ReadAt = Callable[[int, memoryview], None]


class BufferPool:
    """Page-aligned buffers (as O_DIRECT needs) shared by all connections.

    When every pooled buffer is in use, a request gets a small private
    buffer instead of waiting: a request must never wait for a buffer that
    another request holds while its own client is not reading, or a client
    that reads its connections one at a time would deadlock against us.
    """

    def __init__(self, size: int, count: int, fallback_size: int = 256 * 1024) -> None:
        if count < 1:
            raise ValueError("a buffer pool needs at least one buffer")
        self.size = size
        self.fallback_size = min(fallback_size, size)
        self._count = count
        self._free: list[memoryview] = []
        self._pooled: set[int] = set()
        self._lock = threading.Lock()

    @classmethod
    def sized(cls, size: int, total: int) -> BufferPool:
        """A pool of buffers of size bytes taking about total bytes."""
        # Two buffers at least: one request can always double-buffer.
        return cls(size, max(2, total // size))

    def acquire(self) -> memoryview:
        """A pooled buffer, or a small private one if all are in use."""
        buf = self.try_acquire()
        return buf if buf is not None else memoryview(mmap.mmap(-1, self.fallback_size))

    def try_acquire(self) -> memoryview | None:
        with self._lock:
            if self._free:
                return self._free.pop()
            if len(self._pooled) < self._count:
                buf = memoryview(mmap.mmap(-1, self.size))
                self._pooled.add(id(buf))
                return buf
        return None

    def release(self, buf: memoryview) -> None:
        with self._lock:
            if id(buf) in self._pooled:
                self._free.append(buf)
                return
        # A private buffer: dropping the view unmaps it.
        buf.release()

    def allocated(self) -> int:
        with self._lock:
            return len(self._pooled)


def run(
    pool: BufferPool,
    produce: Produce,
    consume: Consume,
    *,
    threaded_side: Literal["produce", "consume"],
    single: bool = False,
) -> None:
    """Move data until produce returns 0.

    threaded_side names the side ("produce" or "consume") that runs in the
    helper thread: the side that does storage I/O, so the request's own
    thread keeps the socket. single=True (the request fits one buffer)
    runs without a helper thread.
    """
    first = pool.acquire()
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


def _threaded_producer(bufs: list[memoryview], produce: Produce, consume: Consume) -> None:
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


def _threaded_consumer(bufs: list[memoryview], produce: Produce, consume: Consume) -> None:
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


def run_lanes(
    pool: BufferPool, readers: list[ReadAt], consume: Consume, start: int, length: int
) -> bool:
    """Read [start, start + length) with one thread per reader, consume in order.

    For storage that serves several reads at once faster than one (an NBD
    server on a network disk): the range is cut into segments of one
    buffer, segment k is read by readers[k % len(readers)] in its own
    thread, and the request's thread consumes them in order. Each lane gets
    two buffers when the pool has them, one otherwise.

    Returns False, having done nothing, when the pool cannot give each lane
    a pooled buffer; the caller then runs the ordinary pipeline.
    """
    lanes = len(readers)
    bufs: list[memoryview] = []
    try:
        for _ in range(2 * lanes):
            buf = pool.try_acquire()
            if buf is None:
                break
            bufs.append(buf)
        if len(bufs) < lanes:
            return False
        _lanes(bufs, readers, consume, start, length)
        return True
    finally:
        for buf in bufs:
            pool.release(buf)


def _lanes(
    bufs: list[memoryview], readers: list[ReadAt], consume: Consume, start: int, length: int
) -> None:
    lanes = len(readers)
    segment = min(len(b) for b in bufs)
    count = -(-length // segment)
    # Per lane: free buffers in (None stops it), filled ones out in order.
    free: list[queue.SimpleQueue[memoryview | None]] = [queue.SimpleQueue() for _ in range(lanes)]
    filled: list[queue.SimpleQueue[Filled | BaseException]] = [
        queue.SimpleQueue() for _ in range(lanes)
    ]
    for i, buf in enumerate(bufs):
        free[i % lanes].put(buf)
    stop = threading.Event()

    def helper(lane: int) -> None:
        try:
            for k in range(lane, count, lanes):
                buf = free[lane].get()
                if buf is None or stop.is_set():
                    return
                offset = start + k * segment
                n = min(segment, start + length - offset)
                readers[lane](offset, buf[:n])
                filled[lane].put((buf, n))
        except BaseException as e:
            filled[lane].put(e)

    threads = [
        threading.Thread(target=helper, args=(lane,), name="io-lane", daemon=True)
        for lane in range(min(lanes, count))
    ]
    for t in threads:
        t.start()
    try:
        for k in range(count):
            lane = k % lanes
            item = filled[lane].get()
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            consume(buf[:n])
            free[lane].put(buf)
    finally:
        stop.set()
        for q in free:
            q.put(None)
        for t in threads:
            t.join()
