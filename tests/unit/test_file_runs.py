"""Extents of a file from SEEK_DATA/SEEK_HOLE answers, also while writers race.

file_runs is pure: it gets lseek as a function. Here that function answers
from a scripted file whose data moves between two calls, as it does when
another connection writes or punches holes while extents are listed.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Sequence

import pytest

from vdsm_imageio.backends import ZeroExtent
from vdsm_imageio.backends.file import SEEK_RETRIES, file_runs

Layout = Sequence[tuple[int, int]]  # data runs [start, end), sorted, disjoint
SIZE = 1 << 20


def seek_in(layout: Layout, pos: int, whence: int, end: int) -> int:
    """lseek(2) on a file whose data is layout; end where lseek fails with ENXIO."""
    for a, b in layout:
        if a <= pos < b:
            return pos if whence == os.SEEK_DATA else b
        if pos < a:
            return a if whence == os.SEEK_DATA else pos
    return end if whence == os.SEEK_DATA else pos


def scripted(layouts: Callable[[int], Layout], end: int) -> Callable[[int, int], int]:
    """A seek whose file changes between calls: call n sees layouts(n)."""
    calls = 0

    def seek(pos: int, whence: int) -> int:
        nonlocal calls
        layout = layouts(calls)
        calls += 1
        return seek_in(layout, pos, whence, end)

    return seek


def check(extents: list[ZeroExtent], start: int, end: int) -> None:
    """Contiguous, covering [start, end) exactly, positive, merged."""
    assert extents, "no extents for a non-empty range"
    assert extents[0].start == start
    assert extents[-1].start + extents[-1].length == end
    for e in extents:
        assert e.length > 0, e
        assert (e.zero, e.hole) in ((True, True), (False, False)), e
    for a, b in itertools.pairwise(extents):
        assert a.start + a.length == b.start, (a, b)
        assert (a.zero, a.hole) != (b.zero, b.hole), ("not merged", a, b)


def data(start: int, end: int) -> ZeroExtent:
    return ZeroExtent(start, end - start, zero=False, hole=False)


def hole(start: int, end: int) -> ZeroExtent:
    return ZeroExtent(start, end - start, zero=True, hole=True)


@pytest.mark.parametrize(
    "layout, start, end, expected",
    [
        ([], 0, SIZE, [hole(0, SIZE)]),
        ([(0, SIZE)], 0, SIZE, [data(0, SIZE)]),
        ([(4096, 8192)], 0, SIZE, [hole(0, 4096), data(4096, 8192), hole(8192, SIZE)]),
        ([(4096, 8192)], 5000, 6000, [data(5000, 6000)]),
        (
            [(0, 4096), (8192, 12288)],
            100,
            10000,
            [data(100, 4096), hole(4096, 8192), data(8192, 10000)],
        ),
    ],
    ids=["all-hole", "all-data", "data-inside", "inside-data", "two-runs"],
)
def test_runs_of_a_quiet_file(
    layout: Layout, start: int, end: int, expected: list[ZeroExtent]
) -> None:
    assert file_runs(scripted(lambda n: layout, end), start, end) == expected


def test_data_punched_between_the_two_seeks_gives_no_empty_extent() -> None:
    # SEEK_DATA finds data at 4 MiB; a punch makes SEEK_HOLE find a hole there.
    mib = 1 << 20
    before = [(4 * mib, 5 * mib)]
    after: Layout = []
    end = 8 * mib
    layouts = [before, before, after]  # hole, then data found, then punched
    extents = file_runs(scripted(lambda n: layouts[min(n, 2)], end), 0, end)
    check(extents, 0, end)
    assert extents == [hole(0, end)]


def test_data_written_between_the_two_seeks_is_reported() -> None:
    end = 64 * 1024
    layouts: list[Layout] = [[], [(0, end)]]
    extents = file_runs(scripted(lambda n: layouts[min(n, 1)], end), 0, end)
    check(extents, 0, end)


def test_a_position_that_never_settles_is_reported_as_data() -> None:
    # Data at pos for SEEK_DATA, a hole at pos for SEEK_HOLE, forever.
    end = 8192
    flapping = [[(0, end)], []]
    extents = file_runs(scripted(lambda n: flapping[n % 2], end), 0, end)
    assert extents == [data(0, end)]


def test_a_position_that_settles_in_time_is_not_given_up() -> None:
    end = 8192
    flapping: list[Layout] = [[(0, end)], []]
    settles = 2 * SEEK_RETRIES  # calls: two per look

    def layouts(n: int) -> Layout:
        return flapping[n % 2] if n < settles else []

    assert file_runs(scripted(layouts, end), 0, end) == [hole(0, end)]


def random_layout(rng: random.Random) -> Layout:
    points = sorted({rng.randrange(0, SIZE, 512) for _ in range(rng.randrange(0, 12))})
    if len(points) % 2:
        points.append(SIZE)
    return list(zip(points[::2], points[1::2], strict=False))


@pytest.mark.parametrize("seed", range(200))
def test_extents_are_well_formed_whatever_the_writers_do(seed: int) -> None:
    rng = random.Random(seed)
    layouts = [random_layout(rng) for _ in range(64)]
    start = rng.randrange(0, SIZE // 2)
    end = rng.randrange(start + 1, SIZE + 1)
    extents = file_runs(scripted(lambda n: layouts[n % len(layouts)], end), start, end)
    check(extents, start, end)
