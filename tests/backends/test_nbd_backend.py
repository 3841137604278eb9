"""What only the nbd backend and its qemu-nbd do: qcow2 allocation, dirty
bitmaps, read-only exports, several connections. qemu-nbd's own lifecycle
is in test_qemu_nbd.py; URL parsing in tests/unit/test_nbd_url.py, the
block status helpers in tests/unit/test_nbdstatus.py."""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable

import pytest

from tests.support.loopfs import run
from vdsm_imageio.backends import DirtyExtent, ZeroExtent
from vdsm_imageio.backends.nbd import NbdBackend, open_nbd
from vdsm_imageio.errors import (
    BackendError,
    StorageReadOnly,
    UnsupportedContext,
)

from .conftest import ServerMaker
from .images import METADATA_SLACK, KiB, MiB, allocated, pattern, read, write
from .targets import IMAGE_SIZE, make_image

GiB = 1024 * MiB
CLUSTER = 64 * KiB


def qemu_io(image: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    run(*argv, image)


def zero_extents(backend: NbdBackend) -> list[ZeroExtent]:
    found: list[ZeroExtent] = []
    for e in backend.extents("zero", 0, backend.size):
        assert isinstance(e, ZeroExtent), e
        found.append(e)
    return found


def dirty_extents(backend: NbdBackend) -> list[DirtyExtent]:
    found: list[DirtyExtent] = []
    for e in backend.extents("dirty", 0, backend.size):
        assert isinstance(e, DirtyExtent), e
        found.append(e)
    return found


# qcow2 allocation.


def test_unallocated_qcow2_clusters_are_holes(
    qcow2: Callable[..., str], serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    backend = backends(serve(qcow2(), "qcow2").url)
    assert zero_extents(backend) == [ZeroExtent(0, IMAGE_SIZE, zero=True, hole=True)]
    write(backend, MiB, pattern(CLUSTER))
    backend.zero(3 * MiB, MiB, punch_hole=True)
    assert zero_extents(backend) == [
        ZeroExtent(0, MiB, zero=True, hole=True),
        ZeroExtent(MiB, CLUSTER, zero=False, hole=False),
        ZeroExtent(MiB + CLUSTER, 2 * MiB - CLUSTER, zero=True, hole=True),
        # A zero cluster is allocated in the image: zeros, not a hole.
        ZeroExtent(3 * MiB, MiB, zero=True, hole=False),
        ZeroExtent(4 * MiB, IMAGE_SIZE - 4 * MiB, zero=True, hole=True),
    ]


def test_backing_file_data_is_a_hole_of_the_top_image(
    qcow2: Callable[..., str], serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    base = qcow2()
    qemu_io(base, f"write -P 7 0 {CLUSTER}")
    top = qcow2(backing=base)
    backend = backends(serve(top, "qcow2").url)
    write(backend, MiB, pattern(CLUSTER))
    assert zero_extents(backend) == [
        ZeroExtent(0, CLUSTER, zero=False, hole=True),
        ZeroExtent(CLUSTER, MiB - CLUSTER, zero=True, hole=True),
        ZeroExtent(MiB, CLUSTER, zero=False, hole=False),
        ZeroExtent(MiB + CLUSTER, IMAGE_SIZE - MiB - CLUSTER, zero=True, hole=True),
    ]
    assert read(backend, 0, CLUSTER) == b"\x07" * CLUSTER


@pytest.mark.parametrize("sparse, freed", [(True, True), (False, False)])
def test_qcow2_zero_frees_clusters_only_for_sparse_tickets(
    qcow2: Callable[..., str],
    serve: ServerMaker,
    backends: Callable[..., NbdBackend],
    sparse: bool,
    freed: bool,
) -> None:
    image = qcow2()
    backend = backends(serve(image, "qcow2").url, sparse=sparse)
    write(backend, 0, pattern(4 * MiB))
    backend.flush()
    before = allocated(image)
    backend.zero(MiB, 2 * MiB, punch_hole=True)
    backend.flush()
    if freed:
        assert allocated(image) <= before - 2 * MiB + METADATA_SLACK
    else:
        assert allocated(image) >= before
    assert read(backend, MiB, 2 * MiB) == bytes(2 * MiB)


# Dirty bitmaps.


def test_dirty_extents_are_the_ranges_written_after_the_bitmap(
    qcow2: Callable[..., str], serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    image = qcow2()
    qemu_io(image, f"write -P 1 0 {CLUSTER}")  # before the bitmap: not dirty
    run("qemu-img", "bitmap", "--add", image, "backup-1")
    qemu_io(image, f"write -P 2 {MiB} {2 * CLUSTER}", f"write -z {4 * MiB} {CLUSTER}")
    backend = backends(serve(image, "qcow2", bitmap="backup-1").url, dirty=True)

    def ext(start: int, end: int, *, dirty: bool, zero: bool) -> DirtyExtent:
        return DirtyExtent(start, end - start, dirty=dirty, zero=zero)

    assert dirty_extents(backend) == [
        ext(0, CLUSTER, dirty=False, zero=False),
        ext(CLUSTER, MiB, dirty=False, zero=True),
        ext(MiB, MiB + 2 * CLUSTER, dirty=True, zero=False),
        ext(MiB + 2 * CLUSTER, 4 * MiB, dirty=False, zero=True),
        ext(4 * MiB, 4 * MiB + CLUSTER, dirty=True, zero=True),
        ext(4 * MiB + CLUSTER, IMAGE_SIZE, dirty=False, zero=True),
    ]
    # Writes through the backend mark the bitmap too.
    write(backend, 6 * MiB, pattern(CLUSTER))
    assert dirty_extents(backend)[-2:] == [
        ext(6 * MiB, 6 * MiB + CLUSTER, dirty=True, zero=False),
        ext(6 * MiB + CLUSTER, IMAGE_SIZE, dirty=False, zero=True),
    ]
    assert list(backend.extents("dirty", MiB + CLUSTER, CLUSTER)) == [
        ext(MiB + CLUSTER, MiB + 2 * CLUSTER, dirty=True, zero=False)
    ]


def test_dirty_extents_need_a_dirty_backend(
    qcow2: Callable[..., str], serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    image = qcow2()
    run("qemu-img", "bitmap", "--add", image, "b")
    backend = backends(serve(image, "qcow2", bitmap="b").url, dirty=False)
    with pytest.raises(UnsupportedContext):
        list(backend.extents("dirty", 0, backend.size))


def test_dirty_extents_need_a_bitmap_on_the_server(
    qcow2: Callable[..., str], serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    backend = backends(serve(qcow2(), "qcow2").url, dirty=True)
    with pytest.raises(UnsupportedContext):
        list(backend.extents("dirty", 0, backend.size))
    assert zero_extents(backend) == [ZeroExtent(0, IMAGE_SIZE, zero=True, hole=True)]


def test_unknown_context_is_unsupported(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    backend = backends(serve(make_image(cache_dir)).url)
    with pytest.raises(UnsupportedContext):
        list(backend.extents("allocation", 0, MiB))


# Read-only exports and errors.


def test_read_only_export_refuses_writes_of_a_write_backend(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    path = make_image(cache_dir)
    with open(path, "r+b") as f:
        f.write(b"keep" * 1024)
    backend = backends(serve(path, read_only=True).url, "rw")
    with pytest.raises(StorageReadOnly):
        write(backend, 0, bytes(4096))
    with pytest.raises(StorageReadOnly):
        backend.zero(0, 4096, punch_hole=False)
    backend.flush()
    assert read(backend, 0, 4096) == b"keep" * 1024


def test_io_after_the_server_stopped_is_a_backend_error(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    server = serve(make_image(cache_dir))
    backend = backends(server.url)
    write(backend, 0, pattern(4096))
    server.stop()
    with pytest.raises(BackendError):
        read(backend, 0, 4096)
    backend.close()


def test_connect_to_missing_socket_is_a_backend_error(socket_dir: str) -> None:
    with pytest.raises(BackendError):
        open_nbd(f"nbd:unix:{socket_dir}/missing.sock", mode="r", sparse=False, dirty=False)


def test_wrong_export_name_is_a_backend_error(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    server = serve(make_image(cache_dir), export_name="vol-1")
    assert server.url.endswith(":exportname=vol-1")
    assert backends(server.url).size == IMAGE_SIZE
    with pytest.raises(BackendError):
        open_nbd(server.url.replace("vol-1", "vol-2"), mode="r", sparse=False, dirty=False)


# Requests larger than the server takes.


def test_io_larger_than_the_server_maximum_is_split(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    path = make_image(cache_dir, size=48 * MiB)
    backend = backends(serve(path).url)
    data = pattern(40 * MiB + 5)
    write(backend, 3, data)
    with open(path, "rb") as f:
        f.seek(3)
        assert f.read(len(data)) == data
    assert read(backend, 3, len(data)) == data


def test_extents_of_an_image_larger_than_one_status_request(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    path = make_image(cache_dir, size=3 * GiB)
    with open(path, "r+b") as f:
        f.seek(2 * GiB + MiB)
        f.write(pattern(MiB))
    backend = backends(serve(path).url)
    assert zero_extents(backend) == [
        ZeroExtent(0, 2 * GiB + MiB, zero=True, hole=True),
        ZeroExtent(2 * GiB + MiB, MiB, zero=False, hole=False),
        ZeroExtent(2 * GiB + 2 * MiB, GiB - 2 * MiB, zero=True, hole=True),
    ]


@pytest.mark.loop
def test_zero_falls_back_when_storage_cannot_zero_fast(
    ramfs_dir: str,
    serve: ServerMaker,
    backends: Callable[..., NbdBackend],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = make_image(ramfs_dir)
    backend = backends(serve(path).url)
    write(backend, 0, pattern(2 * MiB))
    with caplog.at_level(logging.INFO, logger="vdsm_imageio.backends.nbd"):
        backend.zero(0, MiB, punch_hole=True)
        backend.zero(MiB, MiB, punch_hole=False)
    fallbacks = [r for r in caplog.records if "fast zero unsupported" in r.getMessage()]
    assert len(fallbacks) == 1
    with open(path, "rb") as f:
        assert f.read(2 * MiB) == bytes(2 * MiB)


def test_several_connections_share_one_server(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    url = serve(make_image(cache_dir)).url
    opened = [backends(url) for _ in range(4)]
    for n, backend in enumerate(opened):
        write(backend, n * MiB, pattern(4096, seed=n))
    for backend in opened:
        for n in range(4):
            assert read(backend, n * MiB, 4096) == pattern(4096, seed=n)


def test_more_connections_than_clients_of_one_transfer(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    # Every HTTP connection may hold two NBD connections: the server must
    # not make the seventeenth wait in its backlog.
    url = serve(make_image(cache_dir)).url
    opened = [backends(url, "r") for _ in range(17)]
    assert all(read(b, 0, 4096) == bytes(4096) for b in opened)


def test_a_reader_of_a_read_only_export_sees_the_same_data(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    path = make_image(cache_dir)
    with open(path, "r+b") as f:
        f.write(pattern(MiB, seed=7))
    backend = backends(serve(path, read_only=True).url, "r")
    reader = backend.open_reader()
    assert reader is not None
    try:
        assert read(reader, 0, MiB) == pattern(MiB, seed=7)
        with pytest.raises(StorageReadOnly):
            reader.write(0, memoryview(bytearray(4096)))
    finally:
        reader.close()


def test_a_reader_of_a_writer_sees_its_writes(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    # Our qemu-nbd shares one image between connections and says so
    # (multi-conn); without that promise there would be no second reader.
    backend = backends(serve(make_image(cache_dir)).url, "rw")
    assert backend._h.can_multi_conn()
    reader = backend.open_reader()
    assert reader is not None
    try:
        write(backend, 2 * MiB, pattern(MiB, seed=8))
        assert read(reader, 2 * MiB, MiB) == pattern(MiB, seed=8)
    finally:
        reader.close()


def test_backend_keeps_no_reference_to_caller_buffers(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    backend = backends(serve(make_image(cache_dir)).url)
    region = mmap.mmap(-1, MiB)
    view = memoryview(region)
    assert backend.write(0, view[:8192]) == 8192
    assert backend.readinto(0, view[:8192]) == 8192
    view.release()
    region.close()  # BufferError if a view of it is still exported
