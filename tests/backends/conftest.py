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
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest

from storage.qemu_nbd import QemuNbd
from tests.support.daemon import Daemon, finish, new_directory
from tests.support.loopfs import needs_root, run
from vdsm_imageio.backends.nbd import NbdBackend, open_nbd

from .images import MiB
from .targets import (
    IMAGE_SIZE,
    BackendFactory,
    Target,
    file_target,
    http_file_target,
    http_qcow2_target,
    loop_device,
    loop_target,
    make_image,
    mounted,
    nbd_qcow2_target,
    nbd_raw_target,
)

# The repository's .cache (ignored by git) is on a disk; pytest's tmp_path
# may be on tmpfs, which behaves unlike the storage images live on.
CACHE_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, ".cache")


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


@pytest.fixture(scope="session")
def host_daemon() -> Iterator[Daemon]:
    """A real daemon holding the images that http backends reach."""
    daemon = Daemon(new_directory())
    try:
        yield daemon
    finally:
        if (problem := finish(daemon)) is not None:
            pytest.fail(problem)


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
