"""Storage targets for the backend conformance suite.

Every backend passes the same tests on every target. A target is an image
of IMAGE_SIZE zero bytes on some storage, an opener that returns a Backend
for it, and independent ways to look at what is stored (plain buffered
reads of the backing file, SEEK_HOLE, st_blocks), so the tests never judge a
backend only by itself.

To add a backend or a storage, write a context manager that yields a Target
and add it to TARGETS (with the marks it needs); ``backend_factory`` runs
every conformance test on it. What a storage can do (holes) selects the
tests that look at it: ``hole_factory`` and ``solid_factory`` split the
targets by capability, so no test is skipped for lack of one.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import nbd
import pytest

from storage.qemu_nbd import QemuNbd
from tests.support.daemon import Daemon, finish, new_directory
from tests.support.loopfs import needs_root, run
from vdsm_imageio.backends import Backend
from vdsm_imageio.backends.file import open_file
from vdsm_imageio.backends.hostconn import Connector
from vdsm_imageio.backends.http import open_http
from vdsm_imageio.backends.nbd import NbdBackend, open_nbd
from vdsm_imageio.backends.sectorlock import SectorLocks

from .images import MiB

IMAGE_SIZE = 8 * MiB
QCOW2_CLUSTER = 64 * 1024  # qemu-img's default

# The repository's .cache (ignored by git) is on a disk; pytest's tmp_path
# may be on tmpfs, which behaves unlike the storage images live on.
CACHE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, ".cache")


@dataclass
class Target:
    """An image on some storage, and ways to look at it from outside."""

    name: str
    size: int
    open: Callable[[str, bool], Backend]
    read_back: Callable[[int, int], bytes]
    # Regular files grow when written past the end; devices do not.
    growable: bool
    # Block size the backend must report, when the storage fixes it.
    block_size: int | None = None
    # The regular file the backend opens, for tests that look at its size,
    # holes (SEEK_HOLE) and allocation (st_blocks); None for other storage.
    path: str | None = None
    # Zeroing with punch_hole deallocates, and SEEK_HOLE reports holes.
    holes: bool = False
    # (zero, hole) that extents report for a range zeroed with punch_hole
    # on a sparse backend: a hole on files, allocated zeros in a qcow2
    # (qemu keeps a zero cluster), plain data where nothing detects zeros.
    zeroed: tuple[bool, bool] = (False, False)
    # A write into a zeroed range turns whole units into data (qemu fills a
    # qcow2 cluster with zeros rather than keep part of it a zero cluster).
    cluster: int = 4096


@dataclass
class BackendFactory:
    """Opens backends on one target and closes them all at teardown."""

    target: Target
    opened: list[Backend] = field(default_factory=list)

    def __call__(self, mode: str = "rw", *, sparse: bool = True) -> Backend:
        backend = self.target.open(mode, sparse)
        self.opened.append(backend)
        return backend

    def close_all(self) -> None:
        for backend in self.opened:
            backend.close()


@contextlib.contextmanager
def loop_device(backing: str, *, sector_size: int) -> Iterator[str]:
    device = run(
        "losetup",
        "--find",
        "--show",
        "--direct-io=on",
        f"--sector-size={sector_size}",
        backing,
    )
    try:
        yield device
    finally:
        run("losetup", "--detach", device)


@contextlib.contextmanager
def mounted(directory: str, *argv: str) -> Iterator[str]:
    os.makedirs(directory, exist_ok=True)
    run("mount", *argv, directory)
    try:
        yield directory
    finally:
        run("umount", directory)
        os.rmdir(directory)


def make_image(directory: str, size: int = IMAGE_SIZE, *, allocate: bool = False) -> str:
    """A file of size zero bytes: a hole, or written zeros if allocate."""
    path = os.path.join(directory, f"{uuid.uuid4().hex}.img")
    with open(path, "wb") as f:
        if allocate:
            for _ in range(size // MiB):
                f.write(bytes(MiB))
        f.truncate(size)
    return path


def read_file(path: str) -> Callable[[int, int], bytes]:
    def read_back(offset: int, length: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    return read_back


def file_opener(path: str) -> Callable[[str, bool], Backend]:
    # One table per target, as the service has one: its backends share locks.
    locks = SectorLocks()
    return lambda mode, sparse: open_file(path, mode=mode, sparse=sparse, locks=locks)


def nbd_opener(url: str) -> Callable[[str, bool], Backend]:
    return lambda mode, sparse: open_nbd(url, mode=mode, sparse=sparse, dirty=False)


def read_nbd(url: str) -> Callable[[int, int], bytes]:
    """Reads through a plain libnbd connection of its own, not a backend."""
    socket_path = url.removeprefix("nbd:unix:")

    def read_back(offset: int, length: int) -> bytes:
        h = nbd.NBD()
        h.connect_unix(socket_path)
        try:
            return bytes(h.pread(min(length, h.get_size() - offset), offset))
        finally:
            h.shutdown()

    return read_back


# Session-wide storage: one directory per run, file systems mounted once.


@pytest.fixture(scope="session")
def cache_dir() -> Iterator[str]:
    path = os.path.abspath(os.path.join(CACHE_DIR, "tests", uuid.uuid4().hex))
    os.makedirs(path)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="session")
def socket_dir() -> Iterator[str]:
    """Short paths for unix sockets (sun_path holds 107 bytes)."""
    path = tempfile.mkdtemp(prefix="vdsm-nbd-")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="session")
def ext4_4k_dir(cache_dir: str) -> Iterator[str]:
    """ext4 on a device with 4096-byte sectors: direct I/O must align to 4096."""
    needs_root()
    backing = make_image(cache_dir, 64 * MiB)
    with loop_device(backing, sector_size=4096) as device:
        run("mkfs.ext4", "-q", "-F", device)
        with mounted(os.path.join(cache_dir, "ext4-4k"), device) as path:
            yield path
    os.unlink(backing)


@pytest.fixture(scope="session")
def ext4_512_dir(cache_dir: str) -> Iterator[str]:
    """ext4 on a device with 512-byte sectors, whatever the host's disk has."""
    needs_root()
    backing = make_image(cache_dir, 64 * MiB)
    with loop_device(backing, sector_size=512) as device:
        run("mkfs.ext4", "-q", "-F", device)
        with mounted(os.path.join(cache_dir, "ext4-512"), device) as path:
            yield path
    os.unlink(backing)


@pytest.fixture(scope="session")
def tmpfs_dir(cache_dir: str) -> Iterator[str]:
    needs_root()
    with mounted(
        os.path.join(cache_dir, "tmpfs"), "-t", "tmpfs", "-o", "size=64m", "tmpfs"
    ) as path:
        yield path


@pytest.fixture(scope="session")
def ramfs_dir(cache_dir: str) -> Iterator[str]:
    """ramfs has neither direct I/O nor fallocate: every fallback path runs."""
    needs_root()
    with mounted(os.path.join(cache_dir, "ramfs"), "-t", "ramfs", "ramfs") as path:
        yield path


# Targets.


@contextlib.contextmanager
def file_target(
    name: str,
    directory: str,
    *,
    block_size: int | None = None,
    holes: bool = True,
    allocate: bool = False,
) -> Iterator[Target]:
    path = make_image(directory, allocate=allocate)
    try:
        yield Target(
            name=name,
            size=IMAGE_SIZE,
            open=file_opener(path),
            read_back=read_file(path),
            growable=True,
            block_size=block_size,
            path=path,
            holes=holes,
            zeroed=(True, True) if holes else (False, False),
        )
    finally:
        os.unlink(path)


@contextlib.contextmanager
def loop_target(name: str, directory: str, *, sector_size: int) -> Iterator[Target]:
    needs_root()
    backing = make_image(directory)
    try:
        with loop_device(backing, sector_size=sector_size) as device:
            yield Target(
                name=name,
                size=IMAGE_SIZE,
                open=file_opener(device),
                read_back=read_file(backing),
                growable=False,
                block_size=sector_size,
            )
    finally:
        os.unlink(backing)


@contextlib.contextmanager
def nbd_raw_target(
    name: str, directory: str, socket_dir: str, *, holes: bool = True
) -> Iterator[Target]:
    """qemu-nbd serving a raw file: the file is there to look at."""
    path = make_image(directory)
    server = QemuNbd(path, "raw", os.path.join(socket_dir, f"{uuid.uuid4().hex}.sock"))
    try:
        with server:
            yield Target(
                name=name,
                size=IMAGE_SIZE,
                open=nbd_opener(server.url),
                read_back=read_file(path),
                growable=False,
                block_size=1,
                path=path,
                holes=holes,
                zeroed=(True, True) if holes else (False, False),
            )
    finally:
        os.unlink(path)


@contextlib.contextmanager
def nbd_qcow2_target(name: str, directory: str, socket_dir: str) -> Iterator[Target]:
    """qemu-nbd serving a qcow2 image; its guest data is seen through NBD only."""
    path = os.path.join(directory, f"{uuid.uuid4().hex}.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(IMAGE_SIZE))
    server = QemuNbd(path, "qcow2", os.path.join(socket_dir, f"{uuid.uuid4().hex}.sock"))
    try:
        with server:
            yield Target(
                name=name,
                size=IMAGE_SIZE,
                open=nbd_opener(server.url),
                read_back=read_nbd(server.url),
                growable=False,
                block_size=1,
                zeroed=(True, False),
                cluster=QCOW2_CLUSTER,
            )
    finally:
        os.unlink(path)


@pytest.fixture(scope="session")
def host_daemon() -> Iterator[Daemon]:
    """A real daemon holding the images that http backends reach."""
    daemon = Daemon(new_directory())
    try:
        yield daemon
    finally:
        if (problem := finish(daemon)) is not None:
            pytest.fail(problem)


def http_opener(daemon: Daemon, url: str, *, unix_socket: bool) -> Callable[[str, bool], Backend]:
    """Each backend gets a ticket of its own on the host daemon for url:
    write or read as its mode, sparse as asked (the host's ticket decides
    whether zeroing punches holes)."""
    connector = Connector(ca_file=str(daemon.ca), unix_socket=unix_socket)

    def open_(mode: str, sparse: bool) -> Backend:
        ticket_id = str(uuid.uuid4())
        transfer_id = f"conformance-{ticket_id[:8]}"
        ticket = {
            "uuid": ticket_id,
            "size": IMAGE_SIZE,
            "ops": ["write"] if mode == "rw" else ["read"],
            "timeout": 300,
            "url": url,
            "transfer_id": transfer_id,
            "sparse": sparse,
        }
        daemon.result("Ticket.add", ticket=ticket)
        host_url = f"https://127.0.0.1:{daemon.port}/images/{ticket_id}"
        return open_http(host_url, mode=mode, connector=connector, transfer_id=transfer_id)

    return open_


@contextlib.contextmanager
def http_file_target(name: str, daemon: Daemon) -> Iterator[Target]:
    """A file on the host daemon, reached over TLS as from another machine."""
    path = make_image(str(daemon.images))
    try:
        yield Target(
            name=name,
            size=IMAGE_SIZE,
            open=http_opener(daemon, pathlib.Path(path).as_uri(), unix_socket=False),
            read_back=read_file(path),
            growable=False,
            block_size=1,
            path=path,
            holes=True,
            zeroed=(True, True),
        )
    finally:
        os.unlink(path)


@contextlib.contextmanager
def http_qcow2_target(name: str, daemon: Daemon) -> Iterator[Target]:
    """qcow2 guest data through qemu-nbd on the host daemon, reached through
    the unix socket it advertises (the host is this machine)."""
    path = os.path.join(daemon.images, f"{uuid.uuid4().hex}.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", path, str(IMAGE_SIZE))
    # Under the daemon's directory: its url_roots.
    server = QemuNbd(path, "qcow2", os.path.join(daemon.dir, f"{uuid.uuid4().hex[:8]}.sock"))
    try:
        with server:
            yield Target(
                name=name,
                size=IMAGE_SIZE,
                open=http_opener(daemon, server.url, unix_socket=True),
                read_back=read_nbd(server.url),
                growable=False,
                block_size=1,
                zeroed=(True, False),
                cluster=QCOW2_CLUSTER,
            )
    finally:
        os.unlink(path)


TargetMaker = Callable[[pytest.FixtureRequest], contextlib.AbstractContextManager[Target]]

TARGETS: dict[str, TargetMaker] = {
    "file": lambda r: file_target("file", r.getfixturevalue("cache_dir")),
    # Data at the start lets the probe find the disk's own (smaller) alignment.
    "file-prealloc": lambda r: file_target(
        "file-prealloc", r.getfixturevalue("cache_dir"), allocate=True
    ),
    "file-4k": lambda r: file_target("file-4k", r.getfixturevalue("ext4_4k_dir"), block_size=4096),
    "file-tmpfs": lambda r: file_target("file-tmpfs", r.getfixturevalue("tmpfs_dir")),
    "file-ramfs": lambda r: file_target(
        "file-ramfs", r.getfixturevalue("ramfs_dir"), block_size=1, holes=False
    ),
    "loop-512": lambda r: loop_target("loop-512", r.getfixturevalue("cache_dir"), sector_size=512),
    "loop-4k": lambda r: loop_target("loop-4k", r.getfixturevalue("cache_dir"), sector_size=4096),
    "nbd-raw": lambda r: nbd_raw_target(
        "nbd-raw", r.getfixturevalue("cache_dir"), r.getfixturevalue("socket_dir")
    ),
    # qemu-nbd with cache=none on 4096-byte sectors: qemu aligns, not us.
    "nbd-raw-4k": lambda r: nbd_raw_target(
        "nbd-raw-4k", r.getfixturevalue("ext4_4k_dir"), r.getfixturevalue("socket_dir")
    ),
    # No O_DIRECT: qemu-nbd runs with its writeback cache.
    "nbd-raw-ramfs": lambda r: nbd_raw_target(
        "nbd-raw-ramfs",
        r.getfixturevalue("ramfs_dir"),
        r.getfixturevalue("socket_dir"),
        holes=False,
    ),
    "nbd-qcow2": lambda r: nbd_qcow2_target(
        "nbd-qcow2", r.getfixturevalue("cache_dir"), r.getfixturevalue("socket_dir")
    ),
    "http-file": lambda r: http_file_target("http-file", r.getfixturevalue("host_daemon")),
    "http-qcow2": lambda r: http_qcow2_target("http-qcow2", r.getfixturevalue("host_daemon")),
}

FILE_TARGETS = [name for name in TARGETS if name.startswith("file")]
DEVICE_TARGETS = [name for name in TARGETS if name.startswith("loop")]
NBD_TARGETS = [name for name in TARGETS if name.startswith("nbd")]
# Capabilities, as the targets declare them (_factory checks the two agree).
HOLE_TARGETS = ["file", "file-prealloc", "file-4k", "file-tmpfs", "nbd-raw", "nbd-raw-4k"]
# Zeroing through a host daemon punches holes when the host's ticket is
# sparse, whatever punch_hole says (its API has no such flag): a file there
# is neither storage that keeps allocation on request nor storage without holes.
HOST_DECIDES = ["http-file"]
SOLID_TARGETS = [name for name in TARGETS if name not in HOLE_TARGETS + HOST_DECIDES]
UNPRIVILEGED = ("file", "file-prealloc", "nbd-raw", "nbd-qcow2", "http-file", "http-qcow2")


def _param(name: str) -> object:
    """A fixture param for a target, marked loop when the target needs root
    (the type, ParameterSet, is private to pytest)."""
    return pytest.param(name, marks=[] if name in UNPRIVILEGED else [pytest.mark.loop])


def _factory(
    request: pytest.FixtureRequest, *, holes: bool | None = None
) -> Iterator[BackendFactory]:
    with TARGETS[request.param](request) as target:
        if holes is not None:
            # A capability list out of step with the target fails loudly.
            assert (target.holes and target.path is not None) == holes, target.name
        factory = BackendFactory(target)
        try:
            yield factory
        finally:
            factory.close_all()


@pytest.fixture(params=[_param(name) for name in TARGETS])
def backend_factory(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """Opens backends on each target in turn: the conformance suite's fixture."""
    yield from _factory(request)


@pytest.fixture(params=[_param(name) for name in FILE_TARGETS])
def file_factory(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """Regular-file targets only, for what only files do (grow, holes)."""
    yield from _factory(request)


@pytest.fixture(params=[_param(name) for name in DEVICE_TARGETS])
def device_factory(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    yield from _factory(request)


@pytest.fixture(params=[_param(name) for name in HOLE_TARGETS])
def hole_factory(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """Targets whose backing file gets holes where zero() punches them."""
    yield from _factory(request, holes=True)


@pytest.fixture(params=[_param(name) for name in SOLID_TARGETS])
def solid_factory(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """Targets without holes to look at: devices, ramfs, qcow2 clusters."""
    yield from _factory(request, holes=False)


@pytest.fixture(params=[_param(name) for name in NBD_TARGETS])
def nbd_factory(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    yield from _factory(request)


class ServerMaker(Protocol):
    """The serve fixture: a qemu-nbd for image, stopped at teardown."""

    def __call__(
        self,
        image: str,
        fmt: str = "raw",
        *,
        read_only: bool = False,
        bitmap: str | None = None,
        export_name: str = "",
    ) -> QemuNbd: ...


@pytest.fixture
def serve(socket_dir: str) -> Iterator[ServerMaker]:
    """Start qemu-nbd servers; every one is stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(
            image: str,
            fmt: str = "raw",
            *,
            read_only: bool = False,
            bitmap: str | None = None,
            export_name: str = "",
        ) -> QemuNbd:
            sock = os.path.join(socket_dir, f"{uuid.uuid4().hex}.sock")
            server = QemuNbd(
                image, fmt, sock, read_only=read_only, bitmap=bitmap, export_name=export_name
            )
            return stack.enter_context(server)

        yield start


@pytest.fixture
def backends() -> Iterator[Callable[..., NbdBackend]]:
    opened: list[NbdBackend] = []

    def open_(
        url: str, mode: str = "rw", *, sparse: bool = True, dirty: bool = False
    ) -> NbdBackend:
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
