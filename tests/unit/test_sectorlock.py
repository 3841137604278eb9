"""The sector lock table: who may take what, waiting, keys and lifetime."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable

import pytest

from vdsm_imageio.backends.sectorlock import (
    END,
    RangeLock,
    Ranges,
    SectorLocks,
    Span,
    image_key,
)

# Only a broken lock lets a blocked thread through; a slow machine cannot
# make a correct one fail these waits, it can only make them take longer.
BLOCKED_FOR = 0.2
JOIN_TIMEOUT = 10.0


def shared(start: int, end: int) -> Span:
    return Span(start, end, exclusive=False)


def exclusive(start: int, end: int) -> Span:
    return Span(start, end, exclusive=True)


@pytest.mark.parametrize(
    "held, wanted, ok",
    [
        (shared(0, 4096), shared(0, 4096), True),
        (shared(0, 4096), exclusive(0, 512), False),
        (exclusive(0, 512), shared(0, 4096), False),
        (exclusive(0, 512), exclusive(511, 1024), False),
        (exclusive(0, 512), exclusive(512, 1024), True),
        (exclusive(4096, END), shared(0, 4096), True),
        (exclusive(4096, END), shared(0, 4097), False),
        (exclusive(4096, END), exclusive(2**40, 2**40 + 512), False),
    ],
    ids=[
        "shared-shared",
        "shared-blocks-exclusive",
        "exclusive-blocks-shared",
        "exclusive-overlapping",
        "exclusive-adjacent",
        "to-end-leaves-below",
        "to-end-blocks-growing",
        "to-end-blocks-far",
    ],
)
def test_who_may_take_what(held: Span, wanted: Span, ok: bool) -> None:
    ranges = Ranges()
    ranges.take(held)
    assert ranges.can_take(wanted) is ok


def test_waiting_exclusive_goes_before_new_shared_ones() -> None:
    ranges = Ranges(held=[shared(0, 4096)], waiting=[exclusive(0, 512)])
    assert not ranges.can_take(shared(0, 4096))
    assert ranges.can_take(shared(4096, 8192))
    # A second exclusive one is not held back by the first waiting one.
    assert ranges.can_take(exclusive(8192, 8704))


@pytest.mark.parametrize("start, end", [(-1, 10), (10, 10), (10, 5), (0, END + 1)])
def test_invalid_ranges_are_refused(start: int, end: int) -> None:
    lock = RangeLock((1, 2))
    with pytest.raises(ValueError):
        lock.exclusive(start, end)
    with pytest.raises(ValueError):
        lock.shared(start, end)


def run_in_thread(func: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        func()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def wait_until(predicate: Callable[[], bool], timeout: float = JOIN_TIMEOUT) -> bool:
    ticks = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        ticks.wait(0.01)
    return predicate()


def hold(lock: RangeLock, span: Span) -> Callable[[], None]:
    def take() -> None:
        take_ = lock.exclusive if span.exclusive else lock.shared
        with take_(span.start, span.end):
            pass

    return take


@pytest.mark.parametrize(
    "first, second",
    [
        (exclusive(0, 512), exclusive(100, 200)),
        (exclusive(0, 512), shared(0, 4096)),
        (shared(0, 4096), exclusive(3584, 4096)),
    ],
)
def test_conflicting_range_waits_until_released(first: Span, second: Span) -> None:
    lock = RangeLock((1, 2))
    take = lock.exclusive if first.exclusive else lock.shared
    with take(first.start, first.end):
        thread, done = run_in_thread(hold(lock, second))
        assert not done.wait(BLOCKED_FOR)
    thread.join(JOIN_TIMEOUT)
    assert done.is_set()
    assert lock.idle


def test_shared_ranges_do_not_wait_for_each_other() -> None:
    lock = RangeLock((1, 2))
    with lock.shared(0, 8192):
        thread, done = run_in_thread(hold(lock, shared(4096, 12288)))
        thread.join(JOIN_TIMEOUT)
        assert done.is_set()


def test_shared_waits_behind_a_waiting_exclusive() -> None:
    lock = RangeLock((1, 2))
    order: list[str] = []

    def partial() -> None:
        with lock.exclusive(0, 512):
            order.append("partial")

    def aligned() -> None:
        with lock.shared(0, 4096):
            order.append("aligned")

    with lock.shared(0, 4096):
        waiting, _ = run_in_thread(partial)
        # The exclusive waiter must be queued before the next shared one comes.
        assert wait_until(lambda: bool(lock._ranges.waiting))
        later, later_done = run_in_thread(aligned)
        assert not later_done.wait(BLOCKED_FOR)
    waiting.join(JOIN_TIMEOUT)
    later.join(JOIN_TIMEOUT)
    assert order == ["partial", "aligned"]


def test_exception_releases_the_range() -> None:
    lock = RangeLock((1, 2))
    with pytest.raises(OSError), lock.exclusive(0, 512):
        raise OSError("write failed")
    assert lock.idle


def stat_result(mode: int, *, dev: int, ino: int, rdev: int) -> os.stat_result:
    # st_rdev is not part of the 10-item tuple: the extra dict sets it.
    return os.stat_result((mode, ino, dev, 1, 0, 0, 0, 0, 0, 0), {"st_rdev": rdev})


def test_files_are_known_by_device_and_inode() -> None:
    a = stat_result(stat.S_IFREG | 0o644, dev=8, ino=12, rdev=0)
    b = stat_result(stat.S_IFREG | 0o644, dev=8, ino=13, rdev=0)
    assert image_key(a) == (8, 12)
    assert image_key(a) != image_key(b)


def test_block_devices_are_known_by_the_device_they_name() -> None:
    # Two device nodes (on different file systems) for one device.
    a = stat_result(stat.S_IFBLK | 0o660, dev=5, ino=100, rdev=0x0700)
    b = stat_result(stat.S_IFBLK | 0o660, dev=42, ino=7, rdev=0x0700)
    assert image_key(a) == image_key(b) == (0x0700,)


def test_table_shares_one_lock_per_image_while_open(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "image")
    link = os.path.join(tmp_path, "link")
    other = os.path.join(tmp_path, "other")
    for p in (path, other):
        open(p, "wb").close()
    os.symlink(path, link)
    locks = SectorLocks()
    fds = [os.open(p, os.O_RDONLY) for p in (path, link, other)]
    try:
        a, b, c = (locks.attach(fd) for fd in fds)
        assert a is b and a is not c
        assert len(locks) == 2
        locks.detach(a)
        assert locks.attach(fds[0]) is b
        for lock in (b, b, c):
            locks.detach(lock)
        assert len(locks) == 0
        # A new attach after the last detach starts afresh.
        assert locks.attach(fds[0]) is not a
    finally:
        for fd in fds:
            os.close(fd)


def test_tables_are_independent(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "image")
    open(path, "wb").close()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert SectorLocks().attach(fd) is not SectorLocks().attach(fd)
    finally:
        os.close(fd)
