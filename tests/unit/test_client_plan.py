"""The client's pure cores: ranges, the plan, the journal's text."""

from __future__ import annotations

import json

import pytest

from vdsm_imageio.backends import DirtyExtent, ZeroExtent
from vdsm_imageio.client import journal, plan
from vdsm_imageio.client.plan import Item, Op
from vdsm_imageio.client.ranges import Ranges

MiB = 1024**2


# Ranges.


def test_adding_merges_overlapping_and_adjacent_ranges() -> None:
    r = Ranges([(10, 20), (30, 40)])
    r.add(20, 30)
    assert list(r) == [(10, 40)]
    r.add(0, 5)
    r.add(50, 60)
    r.add(35, 55)
    assert list(r) == [(0, 5), (10, 60)]
    assert r.total == 55


def test_adding_an_empty_range_changes_nothing_and_a_reversed_one_is_an_error() -> None:
    r = Ranges([(0, 10)])
    r.add(5, 5)
    assert list(r) == [(0, 10)]
    with pytest.raises(ValueError):
        r.add(10, 5)


def test_missing_lists_the_gaps_in_order() -> None:
    r = Ranges([(10, 20), (30, 40)])
    assert list(r.missing(0, 50)) == [(0, 10), (20, 30), (40, 50)]
    assert list(r.missing(12, 18)) == []
    assert list(r.missing(15, 35)) == [(20, 30)]
    assert list(Ranges().missing(3, 7)) == [(3, 7)]


def test_clipped_keeps_what_is_inside_the_image() -> None:
    assert list(Ranges([(0, 10), (20, 40), (50, 60)]).clipped(30)) == [(0, 10), (20, 30)]


# The plan.


def zero(start: int, length: int, *, hole: bool = True) -> ZeroExtent:
    return ZeroExtent(start, length, zero=True, hole=hole)


def data(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=False, hole=False)


EXTENTS = [data(0, 10), zero(10, 10), zero(20, 10, hole=False), data(30, 10)]


def test_upload_zeroes_zero_ranges_unless_the_disk_is_zero() -> None:
    assert list(plan.upload(EXTENTS, target_is_zero=False)) == [
        Item(Op.COPY, 0, 10),
        Item(Op.ZERO, 10, 10),
        Item(Op.ZERO, 20, 10),
        Item(Op.COPY, 30, 10),
    ]
    assert [i.op for i in plan.upload(EXTENTS, target_is_zero=True)] == [
        Op.COPY,
        Op.SKIP,
        Op.SKIP,
        Op.COPY,
    ]


def test_the_disk_past_the_source_is_zeroed() -> None:
    assert list(plan.disk_tail(40, 100, target_is_zero=False)) == [Item(Op.ZERO, 40, 60)]
    assert list(plan.disk_tail(40, 100, target_is_zero=True)) == [Item(Op.SKIP, 40, 60)]
    assert list(plan.disk_tail(100, 100, target_is_zero=False)) == []


def test_download_zeroes_allocated_zeros_only_over_a_backing_file() -> None:
    assert [i.op for i in plan.download(EXTENTS, backing=False)] == [
        Op.COPY,
        Op.SKIP,
        Op.SKIP,
        Op.COPY,
    ]
    assert [i.op for i in plan.download(EXTENTS, backing=True)] == [
        Op.COPY,
        Op.SKIP,
        Op.ZERO,
        Op.COPY,
    ]


def test_incremental_copies_dirty_data_zeroes_dirty_zeros_skips_clean() -> None:
    extents = [
        DirtyExtent(0, 10, dirty=False, zero=False),
        DirtyExtent(10, 10, dirty=True, zero=False),
        DirtyExtent(20, 10, dirty=True, zero=True),
        DirtyExtent(30, 10, dirty=False, zero=True),
    ]
    assert [i.op for i in plan.incremental(extents)] == [Op.SKIP, Op.COPY, Op.ZERO, Op.SKIP]


def test_remaining_cuts_long_ranges_and_leaves_out_what_is_done() -> None:
    items = [Item(Op.COPY, 0, 100), Item(Op.SKIP, 100, 50), Item(Op.ZERO, 150, 100)]
    done = Ranges([(20, 45), (120, 130), (200, 260)])
    assert list(plan.remaining(items, done, max_copy=30, max_zero=1000)) == [
        Item(Op.COPY, 0, 20),
        Item(Op.COPY, 45, 30),
        Item(Op.COPY, 75, 25),
        Item(Op.SKIP, 100, 20),
        Item(Op.SKIP, 130, 20),
        Item(Op.ZERO, 150, 50),
    ]


def test_remaining_covers_the_image_exactly_once() -> None:
    items = list(plan.upload(EXTENTS, target_is_zero=False))
    done = Ranges([(5, 12), (33, 35)])
    left = list(plan.remaining(items, done, max_copy=4))
    covered = Ranges(done)
    for item in left:
        assert list(covered.missing(item.start, item.end)) == [(item.start, item.end)]
        covered.add(item.start, item.end)
    assert list(covered) == [(0, 40)]


def test_copy_size_gives_every_worker_several_requests_within_bounds() -> None:
    assert plan.copy_size(256 * MiB, 4) == 8 * MiB
    assert plan.copy_size(100 * 1024 * MiB, 4) == plan.MAX_COPY
    assert plan.copy_size(3 * MiB, 4) == plan.MIN_COPY
    assert plan.copy_size(0, 1) == plan.MIN_COPY


def test_extents_must_cover_the_image_without_gaps() -> None:
    plan.check_extents(EXTENTS, 40)
    with pytest.raises(ValueError, match="end at 40"):
        plan.check_extents(EXTENTS, 50)
    with pytest.raises(ValueError, match="does not follow"):
        plan.check_extents([data(0, 10), data(11, 9)], 20)


# The journal's text.


IDENTITY: journal.Identity = {
    "op": "upload",
    "source": "/images/a.qcow2",
    "disk_size": 100,
    "url": "abc",
}


def test_journal_round_trip() -> None:
    text = journal.header(IDENTITY) + journal.commit_line([(0, 10), (20, 30)])
    text += journal.commit_line([(10, 20)])
    identity, done = journal.parse(text)
    assert identity == IDENTITY
    assert list(done) == [(0, 30)]


def test_a_commit_cut_off_by_a_crash_is_ignored() -> None:
    text = journal.header(IDENTITY) + journal.commit_line([(0, 10)])
    torn = text + journal.commit_line([(10, 20)])[:7]
    assert list(journal.parse(torn)[1]) == [(0, 10)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json\n",
        json.dumps({"something": "else"}) + "\n",
        journal.header(IDENTITY) + '{"done": [[10, 5]]}\n',
        journal.header(IDENTITY) + '{"done": [[0, true]]}\n',
        journal.header(IDENTITY) + "garbage\n" + journal.commit_line([(0, 1)]),
    ],
)
def test_anything_else_is_not_a_journal(text: str) -> None:
    with pytest.raises(journal.JournalError):
        journal.parse(text)


def test_first_difference_names_the_field() -> None:
    assert journal.first_difference(IDENTITY, dict(IDENTITY)) is None
    assert journal.first_difference(IDENTITY, {**IDENTITY, "disk_size": 200}) == "disk_size"
    assert journal.first_difference(IDENTITY, {**IDENTITY, "new": 1}) == "new"


def test_journal_names_hold_no_ticket() -> None:
    ticket = "9f4e4a54-1b53-4c3b-a9a3-9b5c0c8e6f10"
    u = f"https://host:54322/images/{ticket}"
    assert ticket not in journal.url_digest(u)
    assert ticket not in str(journal.upload_path(journal.default_state_dir(), "/a.raw", u))
    line = journal.header({**IDENTITY, "url": journal.url_digest(u)})
    assert ticket not in line
