"""The worker pool: one thread per connection, items in image order.

Theory of operation: the calling thread walks the plan and puts items on
one bounded queue; each worker takes the next item, so every connection
sees its items in increasing offsets. A worker does an item with its own
handler (its connection and its local image handle), and every
``checkpoint`` seconds flushes its handler and commits the items done
since the last flush to the journal: a range is journaled only after a
flush covered it, by the connection that wrote it. A slow flush spaces
the next checkpoints out (``FLUSH_SHARE``).

Rules:
- A worker that fails stops the pool: no new items are taken; the other
  workers finish the item they are on, flush and commit it (so a resumed
  transfer sends little again), and exit. The first error is raised.
- ``cancel`` (Ctrl-C, SIGTERM, an error in the calling thread) aborts
  every handler's I/O at once and commits nothing more.
- Every wait is bounded, so the calling thread stays responsive to signals.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from .plan import Item, Op

log = logging.getLogger(__name__)

# How much a crash may cost a resumed transfer, in seconds of transfer
# (plus the requests running): a flush per connection this often is cheap.
CHECKPOINT_SECONDS = 0.5
# ... unless flushing is slow (a server fsync committing many allocations):
# then checkpoints are spaced so that flushing takes at most 1/this of the
# worker's time.
FLUSH_SHARE = 20
POLL = 0.1

Commit = Callable[[list[tuple[int, int]]], None]


class Handler(Protocol):
    """One worker's connection and local image handle."""

    def run(self, item: Item) -> None:
        """Copy or zero the item, reporting bytes to the progress."""

    def flush(self) -> None:
        """Make what this handler wrote durable at its destination."""

    def abort(self) -> None:
        """Called from another thread: make running I/O fail now."""

    def close(self) -> None: ...


class _Closable(Protocol):
    def close(self) -> None: ...


class _Connection(_Closable, Protocol):
    def abort(self) -> None: ...


C = TypeVar("C", bound=_Connection)
L = TypeVar("L", bound=_Closable)


class Ends(Generic[C, L]):
    """What a handler owns: its connection to the server and its local
    image handle; abort stops the connection's I/O, close closes both."""

    def __init__(self, conn: C, local: L) -> None:
        self._conn = conn
        self._local = local

    def abort(self) -> None:
        self._conn.abort()

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._local.close()


class Pool:
    def __init__(
        self,
        handlers: list[Handler],
        *,
        commit: Commit,
        progress: Callable[[int], None],
        checkpoint: float = CHECKPOINT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not handlers:
            raise ValueError("a pool needs at least one handler")
        self._handlers = handlers
        self._commit = commit
        self._progress = progress
        self._checkpoint = checkpoint
        self._clock = clock
        self._queue: queue.Queue[Item | None] = queue.Queue(maxsize=2 * len(handlers))
        self._stop = threading.Event()
        self._canceled = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def run(self, items: Iterable[Item]) -> None:
        """Do every item; raises the first worker's error."""
        threads = [
            threading.Thread(target=self._work, args=(h,), name=f"worker/{i}", daemon=True)
            for i, h in enumerate(self._handlers)
        ]
        for t in threads:
            t.start()
        try:
            for item in items:
                if self._stop.is_set():
                    break
                if item.op is Op.SKIP:
                    self._progress(item.length)
                else:
                    self._put(item)
            for _ in threads:
                self._put(None)
            for t in threads:
                while t.is_alive():
                    t.join(POLL)
        except BaseException:
            self.cancel()
            for t in threads:
                t.join(POLL * 50)
            raise
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self._canceled.set()
        self._stop.set()
        for h in self._handlers:
            h.abort()

    def _put(self, item: Item | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    def _get(self) -> Item | None:
        while not self._stop.is_set():
            try:
                return self._queue.get(timeout=POLL)
            except queue.Empty:
                continue
        return None

    def _work(self, handler: Handler) -> None:
        done: list[tuple[int, int]] = []
        last = self._clock()
        interval = self._checkpoint
        try:
            while (item := self._get()) is not None:
                handler.run(item)
                done.append((item.start, item.end))
                now = self._clock()
                if now - last >= interval:
                    self._flush(handler, done)
                    last = self._clock()
                    interval = max(self._checkpoint, FLUSH_SHARE * (last - now))
            if not self._canceled.is_set():
                self._flush(handler, done)
        except BaseException as e:
            self._fail(e)
            if done and not self._canceled.is_set():
                self._salvage(handler, done)

    def _flush(self, handler: Handler, done: list[tuple[int, int]]) -> None:
        handler.flush()
        if done:
            self._commit(done)
            done.clear()

    def _salvage(self, handler: Handler, done: list[tuple[int, int]]) -> None:
        """After a failure, keep what this connection finished, if it can."""
        try:
            self._flush(handler, done)
        except Exception as e:
            log.debug("SALVAGE failed ranges=%d reason=%s", len(done), e)

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None and not self._canceled.is_set():
                self._error = error
                log.debug("WORKER failed reason=%s", error)
        self._stop.set()
