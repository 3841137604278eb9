"""The pure pieces of the file backend: alignment arithmetic, buffers, merging."""

from __future__ import annotations

import errno

import pytest

from vdsm_imageio.backends import ZeroExtent
from vdsm_imageio.backends.file import merge_extents
from vdsm_imageio.directio import (
    address,
    aligned_buffer,
    fallocate,
    is_aligned,
    round_down,
    round_up,
)


@pytest.mark.parametrize(
    "n, align, down, up",
    [(0, 512, 0, 0), (1, 512, 0, 512), (512, 512, 512, 512), (4097, 4096, 4096, 8192)],
)
def test_rounding(n: int, align: int, down: int, up: int) -> None:
    assert (round_down(n, align), round_up(n, align)) == (down, up)


@pytest.mark.parametrize("align", [512, 4096, 65536])
def test_aligned_buffer_starts_at_an_aligned_address(align: int) -> None:
    buf = aligned_buffer(1000, align)
    assert len(buf) == 1000 and not buf.readonly
    assert address(buf) % align == 0
    assert bytes(buf) == bytes(1000)


def test_empty_buffer() -> None:
    assert len(aligned_buffer(0)) == 0


def test_alignment_of_buffers() -> None:
    buf = aligned_buffer(8192)
    assert is_aligned(buf, 4096)
    assert is_aligned(buf[512:], 512)
    assert not is_aligned(buf[512:], 4096)
    assert not is_aligned(buf[1:], 512)
    # Read-only buffers cannot be inspected: the backend copies them.
    assert not is_aligned(memoryview(bytes(4096)), 512)
    assert is_aligned(memoryview(bytes(3)), 1)


def test_fallocate_raises_errno() -> None:
    with pytest.raises(OSError) as e:
        fallocate(-1, 0, 0, 4096)
    assert e.value.errno == errno.EBADF


def data(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=False, hole=False)


def hole(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=True, hole=True)


@pytest.mark.parametrize(
    "extents, merged",
    [
        ([], []),
        ([data(0, 10), data(10, 5)], [data(0, 15)]),
        ([hole(0, 10), hole(10, 5), data(15, 1)], [hole(0, 15), data(15, 1)]),
        ([data(0, 10), hole(10, 5), data(15, 1)], [data(0, 10), hole(10, 5), data(15, 1)]),
        ([data(0, 10), data(20, 5)], [data(0, 10), data(20, 5)]),
    ],
    ids=["empty", "two-data", "holes-then-data", "alternating", "gap"],
)
def test_merge_extents(extents: list[ZeroExtent], merged: list[ZeroExtent]) -> None:
    assert merge_extents(extents) == merged
