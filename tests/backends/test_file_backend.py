"""What only the file backend does: file sizes, alignment probing, errors."""

from __future__ import annotations

import errno
import logging
import mmap
import os

import pytest

from vdsm_imageio.backends import ZeroExtent
from vdsm_imageio.backends.file import FileBackend, open_file
from vdsm_imageio.backends.sectorlock import SectorLocks
from vdsm_imageio.errors import BackendError, UnsupportedContext

from .images import KiB, MiB, pattern, read, write
from .targets import BackendFactory, make_image

ODD_SIZE = MiB + 1000


def odd_sized_file(factory: BackendFactory) -> tuple[str, bytes]:
    """Give the target's file a size that is not block aligned, full of data."""
    path = factory.target.path
    assert path is not None
    data = pattern(ODD_SIZE, seed=7)
    with open(path, "wb") as f:
        f.write(data)
    return path, data


def opened(factory: BackendFactory, mode: str = "rw", **kw: bool) -> FileBackend:
    backend = factory(mode, **kw)
    assert isinstance(backend, FileBackend)
    return backend


def storage_alignment(path: str) -> int:
    """Smallest alignment direct reads of path's data accept; 1 without O_DIRECT."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        assert e.errno == errno.EINVAL
        return 1
    try:
        for size in (512, 4096):
            try:
                os.preadv(fd, [mmap.mmap(-1, size)], 0)
                return size
            except OSError as e:
                assert e.errno == errno.EINVAL
        raise AssertionError("no alignment works")
    finally:
        os.close(fd)


def test_read_at_unaligned_end_is_short(file_factory: BackendFactory) -> None:
    _, data = odd_sized_file(file_factory)
    backend = file_factory("r")
    assert backend.size == ODD_SIZE
    assert read(backend, MiB, 4096) == data[MiB:]
    assert read(backend, ODD_SIZE - 1, 10) == data[-1:]
    assert read(backend, 0, 2 * MiB) == data
    assert backend.readinto(ODD_SIZE, backend.buffer(4096)) == 0
    unaligned = memoryview(bytearray(5000))[3:]
    assert backend.readinto(MiB + 1, unaligned) == 999


@pytest.mark.parametrize(
    "offset, length",
    [(ODD_SIZE - 100, 10), (ODD_SIZE - 10, 10), (MiB, 1000), (0, ODD_SIZE)],
    ids=["inside-last-block", "up-to-end", "last-block-aligned-start", "whole"],
)
def test_write_inside_odd_sized_file_keeps_size(
    file_factory: BackendFactory, offset: int, length: int
) -> None:
    path, data = odd_sized_file(file_factory)
    backend = file_factory()
    new = pattern(length, seed=8)
    write(backend, offset, new)
    assert os.path.getsize(path) == ODD_SIZE
    assert file_factory.target.read_back(0, 2 * MiB) == (
        data[:offset] + new + data[offset + length :]
    )


def test_write_across_odd_end_grows_to_exact_size(file_factory: BackendFactory) -> None:
    path, data = odd_sized_file(file_factory)
    backend = file_factory()
    write(backend, ODD_SIZE - 10, b"x" * 20)
    assert os.path.getsize(path) == ODD_SIZE + 10
    assert file_factory.target.read_back(0, 2 * MiB) == data[:-10] + b"x" * 20


def test_write_past_end_leaves_zeros_in_the_gap(file_factory: BackendFactory) -> None:
    path, data = odd_sized_file(file_factory)
    backend = file_factory()
    # Fill the backend's scratch buffer first: the gap must not show it.
    write(backend, 1, pattern(64 * KiB, seed=9))
    data = data[:1] + pattern(64 * KiB, seed=9) + data[1 + 64 * KiB :]
    backend.write(ODD_SIZE + 5000, memoryview(b"tail"))
    assert os.path.getsize(path) == ODD_SIZE + 5004
    assert file_factory.target.read_back(0, 2 * MiB) == data + bytes(5000) + b"tail"


@pytest.mark.parametrize("punch_hole", [True, False])
def test_zero_past_end_grows_file(file_factory: BackendFactory, punch_hole: bool) -> None:
    path, data = odd_sized_file(file_factory)
    backend = file_factory()
    backend.zero(ODD_SIZE - 100, 10000, punch_hole=punch_hole)
    assert os.path.getsize(path) == ODD_SIZE + 9900
    assert file_factory.target.read_back(0, 2 * MiB) == data[:-100] + bytes(10000)


def test_block_size_is_the_smallest_the_storage_accepts(
    file_factory: BackendFactory,
) -> None:
    odd_sized_file(file_factory)
    path = file_factory.target.path
    assert path is not None
    backend = opened(file_factory)
    assert backend.block_size == storage_alignment(path)
    assert backend.direct == (backend.block_size > 1)


def test_block_size_without_data_is_safe(file_factory: BackendFactory) -> None:
    # Holes and empty files accept any alignment, so the probe cannot tell.
    path = file_factory.target.path
    assert path is not None
    os.truncate(path, 0)
    backend = opened(file_factory)
    assert backend.block_size in (1, 4096)
    write(backend, 0, b"y" * 512)
    assert os.path.getsize(path) == 512
    assert read(backend, 0, 4096) == b"y" * 512


@pytest.mark.loop
def test_ramfs_falls_back_to_buffered_io(ramfs_dir: str) -> None:
    path = make_image(ramfs_dir, MiB)
    try:
        with open_file(path, mode="rw", sparse=True, locks=SectorLocks()) as backend:
            assert (backend.direct, backend.block_size) == (False, 1)
            backend.zero(0, MiB, punch_hole=True)
            assert read(backend, 0, MiB) == bytes(MiB)
    finally:
        os.unlink(path)


def test_zero_method_is_logged_once(
    file_factory: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = file_factory()
    with caplog.at_level(logging.INFO, logger="vdsm_imageio.backends.file"):
        for _ in range(3):
            backend.zero(0, 8192, punch_hole=False)
    used = [r for r in caplog.records if r.getMessage().startswith("ZERO method=")]
    assert len(used) >= 1
    assert len({r.getMessage() for r in used}) == len(used)


def test_device_zeroes_with_blkzeroout(
    device_factory: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    backend = device_factory()
    write(backend, 0, pattern(MiB))
    with caplog.at_level(logging.INFO, logger="vdsm_imageio.backends.file"):
        backend.zero(0, MiB, punch_hole=False)
    assert "ZERO method=blkzeroout" in caplog.text
    assert "ZERO method=write" not in caplog.text
    assert device_factory.target.read_back(0, MiB) == bytes(MiB)


@pytest.mark.parametrize("context", ["dirty", "bogus"])
def test_other_contexts_are_unsupported(file_factory: BackendFactory, context: str) -> None:
    backend = file_factory()
    with pytest.raises(UnsupportedContext, match=context):
        backend.extents(context, 0, MiB)


def test_device_reports_one_data_extent(device_factory: BackendFactory) -> None:
    backend = device_factory()
    size = backend.size
    assert list(backend.extents("zero", 0, size)) == [ZeroExtent(0, size, zero=False, hole=False)]
    assert list(backend.extents("zero", 100, 1000)) == [
        ZeroExtent(100, 1000, zero=False, hole=False)
    ]
    assert list(backend.extents("zero", size - 10, MiB)) == [
        ZeroExtent(size - 10, 10, zero=False, hole=False)
    ]
    with pytest.raises(UnsupportedContext):
        backend.extents("dirty", 0, size)


def test_device_size_and_sector_size_come_from_the_device(
    device_factory: BackendFactory,
) -> None:
    backend = opened(device_factory)
    assert backend.is_device
    assert backend.size == device_factory.target.size
    assert backend.block_size == device_factory.target.block_size


def test_device_errors_do_not_name_the_device(device_factory: BackendFactory) -> None:
    backend = opened(device_factory)
    with pytest.raises(BackendError) as e:
        backend.zero(backend.size - 512, 1024, punch_hole=False)
    with pytest.raises(BackendError) as e2:
        write(backend, backend.size, b"z" * 4096)
    for error in (e.value, e2.value):
        assert "/dev" not in str(error) and "failed" in str(error)


def test_open_missing_file_does_not_name_it(cache_dir: str) -> None:
    path = os.path.join(cache_dir, "missing.img")
    with pytest.raises(BackendError) as e:
        open_file(path, mode="r", sparse=False, locks=SectorLocks())
    assert "No such file" in str(e.value) and "missing" not in str(e.value)


@pytest.mark.parametrize("make_path", [lambda d: d, lambda d: os.devnull])
def test_open_refuses_other_kinds_of_files(cache_dir: str, make_path: object) -> None:
    assert callable(make_path)
    with pytest.raises(BackendError, match="not a regular file or block device"):
        open_file(make_path(cache_dir), mode="r", sparse=False, locks=SectorLocks())


def test_open_refuses_unknown_mode(cache_dir: str) -> None:
    with pytest.raises(ValueError):
        open_file(make_image(cache_dir, 0), mode="w", sparse=False, locks=SectorLocks())


def test_closed_backend_refuses_io(file_factory: BackendFactory) -> None:
    backend = file_factory()
    backend.close()
    with pytest.raises(ValueError):
        read(backend, 0, 4096)
    with pytest.raises(ValueError):
        backend.flush()
    with pytest.raises(ValueError):
        backend.zero(0, 4096, punch_hole=False)


def test_context_manager_closes(file_factory: BackendFactory) -> None:
    path = file_factory.target.path
    assert path is not None
    with open_file(path, mode="r", sparse=False, locks=SectorLocks()) as backend:
        assert read(backend, 0, 10) == bytes(10)
    with pytest.raises(ValueError):
        read(backend, 0, 10)
