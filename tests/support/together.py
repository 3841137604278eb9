"""Threads that start each round at the same moment.

Races between writers sharing a sector show only when their requests
overlap: each round, every thread waits at a barrier until all are ready,
runs its one call, and waits again until all are done. A failing call
breaks both barriers, so the round raises its error instead of hanging.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class Together:
    """count threads, each running one call per round."""

    def __init__(self, count: int, timeout: float) -> None:
        self._calls: list[Callable[[], None]] = []
        self._errors: list[BaseException] = []
        self._timeout = timeout
        self._start = threading.Barrier(count + 1, timeout=timeout)
        self._done = threading.Barrier(count + 1, timeout=timeout)
        self._stop = False
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        try:
            while True:
                self._start.wait()
                if self._stop:
                    return
                self._calls[i]()
                self._done.wait()
        except threading.BrokenBarrierError:
            return
        except BaseException as e:
            self._errors.append(e)
            self._start.abort()
            self._done.abort()

    def round(self, calls: list[Callable[[], None]]) -> None:
        """Run calls together, one per thread; returns when all are done."""
        assert len(calls) == len(self._threads)
        self._calls = calls
        try:
            self._start.wait()
            self._done.wait()
        except threading.BrokenBarrierError:
            if self._errors:
                raise self._errors[0] from None
            raise

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(threading.BrokenBarrierError):
            self._start.wait()
        for t in self._threads:
            t.join(self._timeout)
        assert not any(t.is_alive() for t in self._threads), "a writer is stuck"


@contextlib.contextmanager
def together(count: int, timeout: float) -> Iterator[Together]:
    t = Together(count, timeout)
    try:
        yield t
    finally:
        t.close()
