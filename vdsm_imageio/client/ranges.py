"""A set of byte ranges: what a transfer has done, as its journal keeps it."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from .. import measure


class Ranges:
    """Disjoint, sorted, non-adjacent [start, end) ranges; adding merges."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ranges) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Ranges({list(self)!r})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def add(self, start: int, end: int) -> None:
        if start < 0 or end < start:
            raise ValueError(f"invalid range [{start}, {end})")
        if start != end:
            measure.merge(self._starts, self._ends, start, end)

    def missing(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of [start, end) not in the set, in order."""
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end and i < len(self._starts) and self._starts[i] < end:
            if self._starts[i] > pos:
                yield pos, self._starts[i]
            pos = max(pos, self._ends[i])
            i += 1
        if pos < end:
            yield pos, end

    def clipped(self, size: int) -> Ranges:
        """The set within [0, size)."""
        return Ranges((s, min(e, size)) for s, e in self if s < size)
