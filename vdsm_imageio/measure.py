"""Byte-range accounting for the ``transferred`` field of a ticket.

``transferred`` is the size of the union of the ranges that requests have
moved, so a client that retries a chunk, or several connections reading
overlapping ranges, never count a byte twice and the figure never exceeds
the image size.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class RangeSet:
    """Sorted, disjoint, non-adjacent half-open ranges ``[start, end)``."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        merge(self._starts, self._ends, start, end)

    def total(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def copy(self) -> RangeSet:
        other = RangeSet()
        other._starts = list(self._starts)
        other._ends = list(self._ends)
        return other

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)


def merge(starts: list[int], ends: list[int], start: int, end: int) -> None:
    """Add [start, end) (start < end) to the sorted, disjoint, non-adjacent
    ranges whose bounds are starts and ends, in place."""
    # First range whose end reaches start, last whose start reaches end;
    # everything in between merges with the new range.
    lo = bisect.bisect_left(ends, start)
    hi = bisect.bisect_right(starts, end)
    if lo < hi:
        start = min(start, starts[lo])
        end = max(end, ends[hi - 1])
    starts[lo:hi] = [start]
    ends[lo:hi] = [end]
