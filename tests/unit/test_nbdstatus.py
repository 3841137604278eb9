"""The pure block status helpers: replies paired into runs, the contexts'
runs intersected, and the zero and dirty extents a run means."""

from __future__ import annotations

import pytest

from vdsm_imageio.backends import DirtyExtent
from vdsm_imageio.backends.nbdstatus import (
    ALLOCATION,
    DEPTH,
    Run,
    dirty_extent,
    intersect,
    merge,
    runs,
    zero_extent,
)


def test_runs_pair_lengths_with_flags() -> None:
    assert runs([4096, 3, 0, 1, 512, 0]) == [(4096, 3), (512, 0)]
    with pytest.raises(ValueError):
        runs([4096])


def test_intersect_cuts_where_any_context_changes() -> None:
    alloc = [(100, 3), (50, 0)]
    depth = [(30, 0), (120, 1)]
    assert intersect(1000, [alloc, depth], 2000) == [
        Run(1000, 30, (3, 0)),
        Run(1030, 70, (3, 1)),
        Run(1100, 50, (0, 1)),
    ]


def test_intersect_stops_at_end_and_at_the_shortest_reply() -> None:
    assert intersect(0, [[(100, 1)], [(60, 2), (100, 0)]], 80) == [
        Run(0, 60, (1, 2)),
        Run(60, 20, (1, 0)),
    ]
    assert intersect(0, [[(100, 1)], [(60, 2)]], 1000) == [Run(0, 60, (1, 2))]
    assert intersect(0, [[(100, 1)], []], 1000) == []


def test_merge_joins_equal_neighbours_only() -> None:
    assert merge(
        [
            DirtyExtent(0, 10, dirty=True, zero=False),
            DirtyExtent(10, 5, dirty=True, zero=False),
            DirtyExtent(15, 5, dirty=True, zero=True),
            DirtyExtent(30, 5, dirty=True, zero=True),
        ]
    ) == [
        DirtyExtent(0, 15, dirty=True, zero=False),
        DirtyExtent(15, 5, dirty=True, zero=True),
        DirtyExtent(30, 5, dirty=True, zero=True),
    ]


@pytest.mark.parametrize(
    "flags, expected",
    [
        ((0, 1), (False, False)),  # data allocated in this image
        ((3, 1), (True, False)),  # a zero cluster
        ((3, 0), (True, True)),  # unallocated everywhere
        ((0, 2), (False, True)),  # a backing file's data
    ],
)
def test_allocation_depth_decides_holes(
    flags: tuple[int, int], expected: tuple[bool, bool]
) -> None:
    ext = zero_extent(Run(0, 512, flags), [ALLOCATION, DEPTH])
    assert (ext.zero, ext.hole) == expected


@pytest.mark.parametrize(
    "flags, expected",
    [
        ((0,), (False, False)),
        ((2,), (True, False)),
        ((3,), (True, True)),
    ],
)
def test_without_depth_base_allocation_decides_holes(
    flags: tuple[int], expected: tuple[bool, bool]
) -> None:
    ext = zero_extent(Run(0, 512, flags), [ALLOCATION])
    assert (ext.zero, ext.hole) == expected


def test_dirty_extent_takes_zero_from_base_allocation() -> None:
    bitmap = "qemu:dirty-bitmap:b"
    assert dirty_extent(Run(8, 4, (1, 3)), [bitmap, ALLOCATION]) == DirtyExtent(
        8, 4, dirty=True, zero=True
    )
    assert dirty_extent(Run(8, 4, (0, 0)), [bitmap, ALLOCATION]) == DirtyExtent(
        8, 4, dirty=False, zero=False
    )
