"""What only the nbd backend and its qemu-nbd do: qcow2 allocation, dirty
bitmaps, read-only exports, server lifecycle, URL parsing and the pure
block status helpers."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest

from storage.qemu_nbd import QemuNbd
from vdsm_imageio.backends import DirtyExtent, ZeroExtent
from vdsm_imageio.backends.nbd import NbdBackend, open_nbd, parse_url
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
from vdsm_imageio.errors import (
    BackendError,
    StorageReadOnly,
    UnsupportedContext,
    VolumeError,
)

from .conftest import IMAGE_SIZE, make_image, run
from .images import METADATA_SLACK, KiB, MiB, allocated, pattern, read, write

GiB = 1024 * MiB
CLUSTER = 64 * KiB

ServerMaker = Callable[..., QemuNbd]


@pytest.fixture
def serve(socket_dir: str) -> Iterator[ServerMaker]:
    """Start qemu-nbd servers; every one is stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(image: str, fmt: str = "raw", **kw: object) -> QemuNbd:
            sock = os.path.join(socket_dir, f"{uuid.uuid4().hex}.sock")
            return stack.enter_context(QemuNbd(image, fmt, sock, **kw))  # type: ignore[arg-type]

        yield start


@pytest.fixture
def backends() -> Iterator[Callable[..., NbdBackend]]:
    opened: list[NbdBackend] = []

    def open_(url: str, mode: str = "rw", *, sparse: bool = True,
              dirty: bool = False) -> NbdBackend:
        backend = open_nbd(url, mode=mode, sparse=sparse, dirty=dirty)
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.close()


@pytest.fixture
def qcow2(cache_dir: str) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def create(size: int = IMAGE_SIZE, *, backing: str | None = None) -> str:
        path = os.path.join(cache_dir, f"{uuid.uuid4().hex}.qcow2")
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if backing:
            argv += ["-b", backing, "-F", "qcow2"]
        run(*argv, path, str(size))
        made.append(path)
        return path

    yield create
    for path in made:
        os.unlink(path)


def qemu_io(image: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    run(*argv, image)


def zero_extents(backend: NbdBackend) -> list[ZeroExtent]:
    found = list(backend.extents("zero", 0, backend.size))
    assert all(isinstance(e, ZeroExtent) for e in found)
    return found  # type: ignore[return-value]


def dirty_extents(backend: NbdBackend) -> list[DirtyExtent]:
    found = list(backend.extents("dirty", 0, backend.size))
    assert all(isinstance(e, DirtyExtent) for e in found)
    return found  # type: ignore[return-value]


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


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
    qcow2: Callable[..., str], serve: ServerMaker, backends: Callable[..., NbdBackend],
    sparse: bool, freed: bool,
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
    ramfs_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend],
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


# qemu-nbd lifecycle.


def test_stop_ends_the_process_and_removes_the_socket(
    cache_dir: str, socket_dir: str
) -> None:
    server = QemuNbd(make_image(cache_dir), "raw", os.path.join(socket_dir, "a.sock"))
    server.start()
    pid = server.pid
    assert pid is not None and alive(pid)
    server.stop()
    assert not alive(pid)
    assert not os.path.exists(server.socket_path)
    server.stop()


def test_stop_kills_a_server_that_ignores_sigterm(cache_dir: str, socket_dir: str) -> None:
    server = QemuNbd(make_image(cache_dir), "raw", os.path.join(socket_dir, "b.sock"),
                     stop_timeout=0.5)
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        # A stopped process leaves SIGTERM pending; only SIGKILL ends it.
        os.kill(pid, signal.SIGSTOP)
        server.stop()
        assert not alive(pid)
        assert not os.path.exists(server.socket_path)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [arg.decode() for arg in f.read().split(b"\0") if arg]


def test_server_options_for_a_qcow2_read_ticket(
    qcow2: Callable[..., str], serve: ServerMaker
) -> None:
    image = qcow2()
    run("qemu-img", "bitmap", "--add", image, "b1")
    server = serve(image, "qcow2", read_only=True, bitmap="b1")
    assert server.pid is not None
    argv = cmdline(server.pid)
    for option in ("--persistent", "--shared=0", "--format=qcow2", "--cache=none",
                   "--aio=native", "--allocation-depth", "--bitmap=b1", "--read-only"):
        assert option in argv
    assert "--discard=unmap" not in argv


def test_raw_write_server_punches_and_reports_no_depth(
    cache_dir: str, serve: ServerMaker
) -> None:
    server = serve(make_image(cache_dir))
    assert server.pid is not None
    argv = cmdline(server.pid)
    assert "--discard=unmap" in argv and "--read-only" not in argv
    assert "--allocation-depth" not in argv


@pytest.mark.loop
def test_writeback_cache_where_direct_io_fails(ramfs_dir: str, serve: ServerMaker) -> None:
    server = serve(make_image(ramfs_dir))
    assert server.pid is not None
    argv = cmdline(server.pid)
    assert "--cache=writeback" in argv and "--aio=native" not in argv


def test_start_fails_with_qemu_nbd_message_and_leaves_nothing(
    cache_dir: str, socket_dir: str
) -> None:
    path = make_image(cache_dir)
    server = QemuNbd(path, "qcow2", os.path.join(socket_dir, "c.sock"))
    with pytest.raises(VolumeError, match="not in qcow2 format"):
        server.start()
    assert server.pid is None
    assert not os.path.exists(server.socket_path)


def test_start_with_missing_bitmap_fails(
    qcow2: Callable[..., str], socket_dir: str
) -> None:
    server = QemuNbd(qcow2(), "qcow2", os.path.join(socket_dir, "d.sock"), bitmap="nope")
    with pytest.raises(VolumeError, match="nope"):
        server.start()
    assert server.pid is None


def test_start_with_missing_image_fails(socket_dir: str) -> None:
    server = QemuNbd(os.path.join(socket_dir, "missing.img"), "raw",
                     os.path.join(socket_dir, "e.sock"), sd_id="sd-1", vol_id="vol-1")
    with pytest.raises(VolumeError) as info:
        server.start()
    assert info.value.fields["vol_id"] == "vol-1"
    assert info.value.fields["sd_id"] == "sd-1"


def test_start_refuses_a_socket_another_server_listens_on(
    cache_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    first = serve(make_image(cache_dir))
    second = QemuNbd(make_image(cache_dir), "raw", first.socket_path)
    with pytest.raises(VolumeError, match="another server"):
        second.start()
    assert backends(first.url).size == IMAGE_SIZE


def test_start_refuses_a_socket_path_too_long(cache_dir: str, socket_dir: str) -> None:
    server = QemuNbd(make_image(cache_dir), "raw", os.path.join(socket_dir, "s" * 120))
    with pytest.raises(VolumeError, match="longer than"):
        server.start()


def test_stale_socket_is_replaced(
    cache_dir: str, socket_dir: str, serve: ServerMaker, backends: Callable[..., NbdBackend]
) -> None:
    first = serve(make_image(cache_dir))
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)  # leaves its socket behind
    os.waitpid(first.pid, 0)
    assert os.path.exists(first.socket_path)
    second = QemuNbd(make_image(cache_dir), "raw", first.socket_path)
    with second:
        assert backends(second.url).size == IMAGE_SIZE


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        QemuNbd("image", "vmdk", "sock")


# Pure helpers.


@pytest.mark.parametrize("url, expected", [
    ("nbd:unix:/run/a.sock", ("/run/a.sock", "")),
    ("nbd:unix:/run/a.sock:exportname=vol", ("/run/a.sock", "vol")),
    ("nbd:unix:/run/a:b.sock:exportname=x:y", ("/run/a:b.sock", "x:y")),
])
def test_parse_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["nbd:unix:run/a.sock", "nbd://host/x", "file:///a"])
def test_parse_url_refuses_other_forms(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_runs_pair_lengths_with_flags() -> None:
    assert runs([4096, 3, 0, 1, 512, 0]) == [(4096, 3), (512, 0)]
    with pytest.raises(ValueError):
        runs([4096])


def test_intersect_cuts_where_any_context_changes() -> None:
    alloc = [(100, 3), (50, 0)]
    depth = [(30, 0), (120, 1)]
    assert intersect(1000, [alloc, depth], 2000) == [
        Run(1000, 30, (3, 0)), Run(1030, 70, (3, 1)), Run(1100, 50, (0, 1)),
    ]


def test_intersect_stops_at_end_and_at_the_shortest_reply() -> None:
    assert intersect(0, [[(100, 1)], [(60, 2), (100, 0)]], 80) == [
        Run(0, 60, (1, 2)), Run(60, 20, (1, 0)),
    ]
    assert intersect(0, [[(100, 1)], [(60, 2)]], 1000) == [Run(0, 60, (1, 2))]
    assert intersect(0, [[(100, 1)], []], 1000) == []


def test_merge_joins_equal_neighbours_only() -> None:
    assert merge([
        DirtyExtent(0, 10, dirty=True, zero=False),
        DirtyExtent(10, 5, dirty=True, zero=False),
        DirtyExtent(15, 5, dirty=True, zero=True),
        DirtyExtent(30, 5, dirty=True, zero=True),
    ]) == [
        DirtyExtent(0, 15, dirty=True, zero=False),
        DirtyExtent(15, 5, dirty=True, zero=True),
        DirtyExtent(30, 5, dirty=True, zero=True),
    ]


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


def test_start_with_unusable_socket_directory_fails(cache_dir: str) -> None:
    not_a_dir = make_image(cache_dir)
    server = QemuNbd(make_image(cache_dir), "raw", os.path.join(not_a_dir, "f.sock"))
    with pytest.raises(VolumeError, match="cannot use socket"):
        server.start()
    assert server.pid is None


@pytest.mark.parametrize("flags, expected", [
    ((0, 1), (False, False)),  # data allocated in this image
    ((3, 1), (True, False)),  # a zero cluster
    ((3, 0), (True, True)),  # unallocated everywhere
    ((0, 2), (False, True)),  # a backing file's data
])
def test_allocation_depth_decides_holes(
    flags: tuple[int, int], expected: tuple[bool, bool]
) -> None:
    ext = zero_extent(Run(0, 512, flags), [ALLOCATION, DEPTH])
    assert (ext.zero, ext.hole) == expected


@pytest.mark.parametrize("flags, expected", [
    ((0,), (False, False)), ((2,), (True, False)), ((3,), (True, True)),
])
def test_without_depth_base_allocation_decides_holes(
    flags: tuple[int], expected: tuple[bool, bool]
) -> None:
    ext = zero_extent(Run(0, 512, flags), [ALLOCATION])
    assert (ext.zero, ext.hole) == expected


def test_dirty_extent_takes_zero_from_base_allocation() -> None:
    bitmap = "qemu:dirty-bitmap:b"
    assert dirty_extent(Run(8, 4, (1, 3)), [bitmap, ALLOCATION]) == DirtyExtent(
        8, 4, dirty=True, zero=True)
    assert dirty_extent(Run(8, 4, (0, 0)), [bitmap, ALLOCATION]) == DirtyExtent(
        8, 4, dirty=False, zero=False)
