"""A clock that moves only when a test moves it."""

from __future__ import annotations


class FakeClock:
    """Stands in for ``time.monotonic``: expiry and backoff are tested by
    setting ``now``, never by sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds
