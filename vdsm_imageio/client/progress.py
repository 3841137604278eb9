"""Progress of a transfer: a bar on a terminal, JSON lines, or nothing.

Workers report bytes from their threads; every reporter takes its own lock.
``transferred`` counts image bytes dealt with (copied, zeroed, skipped, or
done by an earlier run that this one resumes), so it ends at the size.
``rate`` is of this run only: bytes this run dealt with over its time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

# JSON lines at most this often (and one at the end): enough for a
# wrapping tool's bar, little enough for its log.
JSON_INTERVAL = 0.2

Clock = Callable[[], float]


class Progress(Protocol):
    def start(self, size: int, done: int) -> None: ...
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


class Quiet:
    def start(self, size: int, done: int) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class JsonLines:
    """One JSON object per line: transferred, size, elapsed, rate."""

    def __init__(
        self, out: IO[str], *, clock: Clock = time.monotonic, interval: float = JSON_INTERVAL
    ) -> None:
        self._out = out
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._size = 0
        self._initial = 0
        self._transferred = 0
        self._started = 0.0
        self._last_time = 0.0
        self._last_value = -1

    def start(self, size: int, done: int) -> None:
        with self._lock:
            self._size, self._initial, self._transferred = size, done, done
            self._started = self._clock()
            self._last_time = self._started
            self._emit(self._started)

    def update(self, n: int) -> None:
        with self._lock:
            self._transferred += n
            now = self._clock()
            if now - self._last_time >= self._interval:
                self._emit(now)

    def close(self) -> None:
        with self._lock:
            if self._transferred != self._last_value:
                self._emit(self._clock())

    def _emit(self, now: float) -> None:
        elapsed = now - self._started
        moved = self._transferred - self._initial
        line = {
            "transferred": self._transferred,
            "size": self._size,
            "elapsed": round(elapsed, 3),
            "rate": round(moved / elapsed) if elapsed > 0 else 0,
        }
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()
        self._last_time = now
        self._last_value = self._transferred


class Bar:
    """tqdm's bar with rate and ETA, on the terminal's stderr."""

    def __init__(self, out: IO[str], description: str) -> None:
        self._out = out
        self._description = description
        self._lock = threading.Lock()
        self._bar: Any = None

    def start(self, size: int, done: int) -> None:
        # Imported here: only a terminal needs it.
        from tqdm import tqdm

        with self._lock:
            self._bar = tqdm(
                total=size,
                initial=done,
                desc=self._description,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._out,
                dynamic_ncols=True,
                mininterval=0.2,
            )

    def update(self, n: int) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
