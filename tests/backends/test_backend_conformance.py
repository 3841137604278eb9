"""What every backend does, on every storage target (see conftest.TARGETS)."""

from __future__ import annotations

import itertools
import mmap

import pytest

from vdsm_imageio.backends import ZeroExtent
from vdsm_imageio.errors import BackendError, StorageReadOnly

from .images import (
    METADATA_SLACK,
    KiB,
    MiB,
    address,
    allocated,
    holes,
    joined,
    pattern,
    read,
    write,
)
from .targets import BackendFactory


def test_size_is_image_size(backend_factory: BackendFactory) -> None:
    assert backend_factory().size == backend_factory.target.size


def test_block_size_matches_storage(backend_factory: BackendFactory) -> None:
    expected = backend_factory.target.block_size
    block_size = backend_factory().block_size
    if expected is None:
        assert block_size in (1, 512, 4096)
    else:
        assert block_size == expected


@pytest.mark.parametrize("size", [1, 4096, MiB + 1])
def test_buffer_is_aligned_writable_and_sized(backend_factory: BackendFactory, size: int) -> None:
    backend = backend_factory()
    buf = backend.buffer(size)
    assert len(buf) == size and not buf.readonly
    assert address(buf) % max(backend.block_size, mmap.PAGESIZE) == 0
    buf[-1] = 0xFF


def test_aligned_round_trip(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    data = pattern(2 * MiB)
    write(backend, MiB, data)
    assert read(backend, MiB, len(data)) == data
    assert backend_factory.target.read_back(MiB, len(data)) == data


@pytest.mark.parametrize("offset", [0, 1, 511, 512, 4095, 4097])
@pytest.mark.parametrize("length", [1, 4096, 8192 + 3])
def test_unaligned_write_keeps_neighbours(
    backend_factory: BackendFactory, offset: int, length: int
) -> None:
    backend = backend_factory()
    before = pattern(64 * KiB, seed=1)
    write(backend, 0, before)
    data = pattern(length, seed=2)
    write(backend, offset, data)
    expected = before[:offset] + data + before[offset + length :]
    assert read(backend, 0, len(before)) == expected
    assert backend_factory.target.read_back(0, len(before)) == expected


@pytest.mark.parametrize(
    "offset, length",
    [(4100, 10), (4000, 5000), (511, 2), (3, 3 * MiB + 5)],
    ids=["inside-one-block", "across-blocks", "across-one-boundary", "many-chunks"],
)
def test_unaligned_write_round_trip(
    backend_factory: BackendFactory, offset: int, length: int
) -> None:
    backend = backend_factory()
    data = pattern(length)
    write(backend, offset, data)
    assert read(backend, offset, length) == data
    assert backend_factory.target.read_back(offset, length) == data
    assert read(backend, offset + length, 4096) == bytes(4096)


@pytest.mark.parametrize("offset", [0, 4096, 1])
def test_write_from_unaligned_buffers(backend_factory: BackendFactory, offset: int) -> None:
    backend = backend_factory()
    data = pattern(2 * MiB + 100)
    unaligned = memoryview(bytearray(len(data) + 1))[1:]
    unaligned[:] = data
    assert backend.write(offset, unaligned) == len(data)
    assert backend.write(offset + 3 * MiB, memoryview(data)) == len(data)
    assert backend_factory.target.read_back(offset, len(data)) == data
    assert backend_factory.target.read_back(offset + 3 * MiB, len(data)) == data


@pytest.mark.parametrize("offset", [0, 1, 511, 4095, 4097])
def test_read_into_unaligned_buffer(backend_factory: BackendFactory, offset: int) -> None:
    backend = backend_factory()
    data = pattern(64 * KiB)
    write(backend, 0, data)
    buf = memoryview(bytearray(10000 + 1))[1:]
    assert backend.readinto(offset, buf) == len(buf)
    assert bytes(buf) == data[offset : offset + len(buf)]


@pytest.mark.parametrize("offset", [1, 511, 4095, 4097])
def test_read_unaligned_offset_into_aligned_buffer(
    backend_factory: BackendFactory, offset: int
) -> None:
    backend = backend_factory()
    data = pattern(64 * KiB)
    write(backend, 0, data)
    assert read(backend, offset, 8192 + 7) == data[offset : offset + 8192 + 7]


def test_read_at_end_of_image_returns_zero(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    size = backend.size
    assert backend.readinto(size, backend.buffer(4096)) == 0
    assert backend.readinto(size + 4096, backend.buffer(4096)) == 0
    assert backend.readinto(size + 1, memoryview(bytearray(10))) == 0


def test_read_across_end_of_image_is_short(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    size = backend.size
    tail = pattern(4096)
    write(backend, size - 4096, tail)
    assert read(backend, size - 100, 4096) == tail[-100:]
    assert read(backend, size - 4096, 3 * 4096) == tail


def test_write_past_end_grows_only_growable_images(
    backend_factory: BackendFactory,
) -> None:
    backend = backend_factory()
    size = backend.size
    data = pattern(8192)
    if backend_factory.target.growable:
        write(backend, size + 4096, data)
        assert backend.size == size + 4096 + 8192
        assert read(backend, size, 4096 + 8192) == bytes(4096) + data
    else:
        with pytest.raises(BackendError):
            write(backend, size - 4096, data)
        assert backend.size == size


@pytest.mark.parametrize("punch_hole", [True, False])
@pytest.mark.parametrize(
    "offset, length",
    [(MiB, MiB), (1000, 3 * 4096 + 7), (4095, 2)],
    ids=["aligned", "unaligned", "inside-one-block"],
)
def test_zero_reads_back_as_zeros(
    backend_factory: BackendFactory, offset: int, length: int, punch_hole: bool
) -> None:
    backend = backend_factory()
    before = pattern(3 * MiB)
    write(backend, 0, before)
    backend.zero(offset, length, punch_hole=punch_hole)
    expected = before[:offset] + bytes(length) + before[offset + length :]
    assert read(backend, 0, len(before)) == expected
    assert backend_factory.target.read_back(0, len(before)) == expected
    assert backend.size == backend_factory.target.size


def test_zero_with_punch_hole_leaves_a_hole(hole_factory: BackendFactory) -> None:
    path = hole_factory.target.path
    assert path is not None
    backend = hole_factory(sparse=True)
    write(backend, 0, pattern(4 * MiB))
    backend.flush()
    before = allocated(path)
    backend.zero(MiB, 2 * MiB, punch_hole=True)
    assert any(start <= MiB and 3 * MiB <= end for start, end in holes(path))
    assert allocated(path) <= before - 2 * MiB + METADATA_SLACK


@pytest.mark.parametrize("sparse, punch_hole", [(True, False), (False, True)])
def test_zero_keeps_allocation_unless_punching_is_allowed(
    hole_factory: BackendFactory, sparse: bool, punch_hole: bool
) -> None:
    path = hole_factory.target.path
    assert path is not None
    backend = hole_factory(sparse=sparse)
    write(backend, 0, pattern(4 * MiB))
    backend.flush()
    before = allocated(path)
    backend.zero(MiB, 2 * MiB, punch_hole=punch_hole)
    assert allocated(path) >= before
    assert read(backend, MiB, 2 * MiB) == bytes(2 * MiB)


@pytest.mark.parametrize("sparse, punch_hole", [(True, True), (True, False), (False, True)])
def test_zero_on_storage_without_holes_reads_zeros_and_leaves_no_hole(
    solid_factory: BackendFactory, sparse: bool, punch_hole: bool
) -> None:
    target = solid_factory.target
    backend = solid_factory(sparse=sparse)
    write(backend, 0, pattern(4 * MiB))
    backend.flush()
    before = allocated(target.path) if target.path else None
    backend.zero(MiB, 2 * MiB, punch_hole=punch_hole)
    assert read(backend, 0, 4 * MiB)[MiB : 3 * MiB] == bytes(2 * MiB)
    assert target.read_back(MiB, 2 * MiB) == bytes(2 * MiB)
    zero, hole = target.zeroed
    assert not hole
    assert list(backend.extents("zero", MiB, 2 * MiB)) == [
        ZeroExtent(MiB, 2 * MiB, zero=zero, hole=hole)
    ]
    if target.path is not None and before is not None:
        assert allocated(target.path) >= before


def test_zero_of_nothing_changes_nothing(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    data = pattern(8192)
    write(backend, 0, data)
    backend.zero(100, 0, punch_hole=True)
    assert read(backend, 0, 8192) == data


def test_extents_cover_the_image_once(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    write(backend, MiB, pattern(MiB))
    extents = list(backend.extents("zero", 0, backend.size))
    assert extents[0].start == 0
    assert sum(e.length for e in extents) == backend.size
    for a, b in itertools.pairwise(extents):
        assert isinstance(a, ZeroExtent) and isinstance(b, ZeroExtent)
        assert a.start + a.length == b.start
        assert (a.zero, a.hole) != (b.zero, b.hole), "adjacent extents not merged"


def test_extents_report_data_and_zeroed_ranges(backend_factory: BackendFactory) -> None:
    """Zeroed ranges are holes on files; storage without holes says what it can."""
    backend = backend_factory(sparse=True)
    size = backend.size
    backend.zero(0, size, punch_hole=True)
    for start, length in [(0, 64 * KiB), (MiB, 128 * KiB), (5 * MiB, 4 * KiB)]:
        write(backend, start, pattern(length))
    zero, hole = backend_factory.target.zeroed
    # The third write is smaller than a qcow2 cluster.
    tail = 5 * MiB + max(4 * KiB, backend_factory.target.cluster)

    def data(start: int, end: int) -> ZeroExtent:
        return ZeroExtent(start, end - start, zero=False, hole=False)

    def zeroed(start: int, end: int) -> ZeroExtent:
        return ZeroExtent(start, end - start, zero=zero, hole=hole)

    assert list(backend.extents("zero", 0, size)) == joined(
        [
            data(0, 64 * KiB),
            zeroed(64 * KiB, MiB),
            data(MiB, MiB + 128 * KiB),
            zeroed(MiB + 128 * KiB, 5 * MiB),
            data(5 * MiB, tail),
            zeroed(tail, size),
        ]
    )
    # Clipped to the range asked for: starting in data, ending in data.
    assert list(backend.extents("zero", 32 * KiB, MiB)) == joined(
        [
            data(32 * KiB, 64 * KiB),
            zeroed(64 * KiB, MiB),
            data(MiB, MiB + 32 * KiB),
        ]
    )
    # Starting and ending inside one zeroed range.
    assert list(backend.extents("zero", 2 * MiB, 1000)) == [zeroed(2 * MiB, 2 * MiB + 1000)]
    # Clipped to the image size.
    assert list(backend.extents("zero", 5 * MiB + 1, 2 * size)) == joined(
        [
            data(5 * MiB + 1, tail),
            zeroed(tail, size),
        ]
    )


def test_extents_from_end_of_image_are_empty(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    assert list(backend.extents("zero", backend.size, MiB)) == []
    assert list(backend.extents("zero", 0, 0)) == []


def test_flush_after_write(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    data = pattern(MiB + 3)
    write(backend, 5, data)
    backend.flush()
    assert backend_factory.target.read_back(5, len(data)) == data


def test_other_backend_sees_writes_without_flush(
    backend_factory: BackendFactory,
) -> None:
    writer, reader = backend_factory(), backend_factory("r")
    assert read(reader, 0, 8192) == bytes(8192)
    data = pattern(8192)
    write(writer, 0, data)
    assert read(reader, 0, 8192) == data


def test_read_only_backend_refuses_writes(backend_factory: BackendFactory) -> None:
    data = pattern(8192)
    write(backend_factory(), 0, data)
    backend = backend_factory("r")
    with pytest.raises(StorageReadOnly):
        write(backend, 0, bytes(8192))
    with pytest.raises(StorageReadOnly):
        backend.zero(0, 8192, punch_hole=True)
    assert read(backend, 0, 8192) == data
    assert backend_factory.target.read_back(0, 8192) == data


def test_close_twice_is_harmless(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    backend.close()
    backend.close()
