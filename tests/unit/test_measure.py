from __future__ import annotations

from vdsm_imageio.measure import RangeSet


def test_disjoint_ranges_add_up() -> None:
    r = RangeSet([(0, 10), (20, 30)])
    assert r.total() == 20
    assert len(r) == 2


def test_overlapping_ranges_count_once() -> None:
    r = RangeSet([(0, 10), (5, 15), (0, 15)])
    assert r.total() == 15
    assert r.ranges() == [(0, 15)]


def test_adjacent_ranges_merge() -> None:
    r = RangeSet([(0, 10), (10, 20)])
    assert r.ranges() == [(0, 20)]


def test_range_bridging_several_merges_them() -> None:
    r = RangeSet([(0, 1), (5, 6), (10, 11), (20, 21)])
    r.add(1, 10)
    assert r.ranges() == [(0, 11), (20, 21)]


def test_empty_range_is_ignored() -> None:
    r = RangeSet([(5, 5), (7, 3)])
    assert r.total() == 0


def test_copy_is_independent() -> None:
    r = RangeSet([(0, 10)])
    c = r.copy()
    c.add(10, 20)
    assert r.total() == 10 and c.total() == 20


def test_many_random_ranges_match_a_bitmap() -> None:
    import random

    rnd = random.Random(7)
    r = RangeSet()
    seen = bytearray(1000)
    for _ in range(300):
        s = rnd.randrange(1000)
        e = min(1000, s + rnd.randrange(40))
        r.add(s, e)
        seen[s:e] = b"\1" * (e - s)
    assert r.total() == sum(seen)
