"""Reading and hashing the blocks of a checksum: its threads.

Theory of operation: ``checksum.schedule`` turns the image into zero
blocks, whose digest is known, and jobs of data blocks. Each job runs on
a worker thread: it takes a slot (a reader and a buffer from the server's
pool), reads the job's data pieces one buffer at a time, fills the gaps
between them with zeros and hashes each block. hashlib releases the GIL
for buffers over 2 KiB, so ``lanes`` workers hash at once on as many
cores; there are twice as many workers as hashing lanes, so while some
hash, the others have reads queued and the storage never waits for the
CPU (nor the CPU for the storage). The request's thread walks the plan,
keeps two jobs per worker in flight, and feeds the block digests to the
root hash strictly in image order, reporting each block's length to
``progress``.

Rules:
- ``progress`` runs on the request's thread; when it raises (the ticket
  was canceled), jobs not yet started never start, running ones stop at
  their next buffer, and the error is raised once every worker is joined.
- A worker's error is raised in the request's thread; every pool buffer is
  returned, on success and on error.
- Workers may share a reader (a file backend has one descriptor and its
  reads are positional): every read is of whole 4 KiB pages into a
  page-aligned buffer, except the one that ends at an unaligned image end.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from .checksum import (
    BLOCK_ALIGNMENT,
    Block,
    BlockHash,
    HashFactory,
    Job,
    pieces_in,
    schedule,
    windows,
)
from .pipeline import BufferPool

# Fill the whole buffer with the image's bytes at this offset.
ReadAt = Callable[[int, memoryview], None]
# Zero blocks waiting behind a running job; past this the walk waits.
MAX_PENDING = 4096
# Jobs queued per worker: one running, one ready to start.
JOBS_PER_WORKER = 2
# Workers (and buffers) per hashing lane: one reads while the other hashes.
WORKERS_PER_LANE = 2


class _Stopped(Exception):
    """A job gave up because the request stopped; never seen by callers."""


@dataclass(frozen=True)
class _Slot:
    read: ReadAt
    buf: memoryview


def compute(
    blocks: Iterable[Block],
    *,
    new: HashFactory,
    zero_digest: Callable[[int], bytes],
    readers: Sequence[ReadAt],
    pool: BufferPool,
    lanes: int,
    progress: Callable[[int], None],
) -> str:
    """The hex checksum of the image whose blocks (``checksum.plan``) are
    given, hashing on up to ``lanes`` threads at once."""
    bufs: list[memoryview] = []
    try:
        while len(bufs) < WORKERS_PER_LANE * lanes and (buf := pool.try_acquire()) is not None:
            bufs.append(buf)
        if not bufs:
            # The pool is empty: one small private buffer rather than wait.
            bufs.append(pool.acquire())
        slots = [_Slot(readers[i % len(readers)], b) for i, b in enumerate(bufs)]
        return _Run(slots, lanes, new, zero_digest, progress).run(blocks)
    finally:
        for buf in bufs:
            pool.release(buf)


class _Run:
    def __init__(
        self,
        slots: list[_Slot],
        lanes: int,
        new: HashFactory,
        zero_digest: Callable[[int], bytes],
        progress: Callable[[int], None],
    ) -> None:
        self._new = new
        self._zero_digest = zero_digest
        self._progress = progress
        self._workers = len(slots)
        self._window = min(len(s.buf) for s in slots) // BLOCK_ALIGNMENT * BLOCK_ALIGNMENT
        self._zeros = memoryview(bytes(self._window))
        self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in slots:
            self._slots.put(slot)
        self._stop = threading.Event()
        self._hashing = threading.BoundedSemaphore(lanes)
        self._root = new()
        self._pending: collections.deque[tuple[Block | Job, Future[list[bytes]] | None]] = (
            collections.deque()
        )
        self._running = 0

    def run(self, blocks: Iterable[Block]) -> str:
        executor = ThreadPoolExecutor(self._workers, thread_name_prefix="io-checksum")
        try:
            for item in schedule(blocks, self._window):
                if isinstance(item, Job):
                    while self._running >= JOBS_PER_WORKER * self._workers:
                        self._collect()
                    self._pending.append((item, executor.submit(self._job, item)))
                    self._running += 1
                else:
                    self._pending.append((item, None))
                self._collect_ready()
                while len(self._pending) > MAX_PENDING:
                    self._collect()
            while self._pending:
                self._collect()
        finally:
            self._stop.set()
            executor.shutdown(wait=True, cancel_futures=True)
        return self._root.hexdigest()

    # The request's thread: digests in image order.

    def _collect_ready(self) -> None:
        while self._pending:
            future = self._pending[0][1]
            if future is not None and not future.done():
                return
            self._collect()

    def _collect(self) -> None:
        item, future = self._pending.popleft()
        if future is None:
            assert isinstance(item, Block)
            self._root.update(self._zero_digest(item.length))
            self._progress(item.length)
            return
        assert isinstance(item, Job)
        self._running -= 1
        for block, digest in zip(item.blocks, future.result(), strict=True):
            self._root.update(digest)
            self._progress(block.length)

    # Worker threads.

    def _job(self, job: Job) -> list[bytes]:
        slot = self._slots.get()
        try:
            return self._hash_job(job, slot)
        finally:
            self._slots.put(slot)

    def _hash_job(self, job: Job, slot: _Slot) -> list[bytes]:
        digests: list[bytes] = []
        blocks = iter(job.blocks)
        block = next(blocks)
        h = BlockHash(self._new, self._zero_digest)
        for start, length in windows(job, self._window):
            if self._stop.is_set():
                raise _Stopped()
            end = start + length
            buf = slot.buf[:length]
            self._fill(slot.read, buf, start, job)
            with self._hashing:
                while True:
                    h.update(buf[max(block.start, start) - start : min(block.end, end) - start])
                    if block.end > end:
                        break
                    digests.append(h.digest())
                    h = BlockHash(self._new, self._zero_digest)
                    next_block = next(blocks, None)
                    if next_block is None:
                        break
                    block = next_block
        return digests

    def _fill(self, read: ReadAt, buf: memoryview, start: int, job: Job) -> None:
        """Read the job's data in [start, start + len(buf)); zeros elsewhere."""
        pos = start
        for p_start, p_len in pieces_in(job, start, start + len(buf)):
            if p_start > pos:
                buf[pos - start : p_start - start] = self._zeros[: p_start - pos]
            read(p_start, buf[p_start - start : p_start - start + p_len])
            pos = p_start + p_len
        end = start + len(buf)
        if pos < end:
            buf[pos - start :] = self._zeros[: end - pos]
