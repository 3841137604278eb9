"""Storage targets for the backend tests: an image of IMAGE_SIZE zero bytes on
some storage (a file, a loop device, qemu-nbd, a host daemon), an opener that
returns a Backend for it, and independent ways to look at what is stored.

The helpers that make the storage (images, loop devices, mounts) live here
too; the fixtures that choose targets are in conftest.py."""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import nbd

from storage.qemu_nbd import QemuNbd
from tests.support.daemon import Daemon
from tests.support.loopfs import needs_root, run
from vdsm_imageio.backends import Backend
from vdsm_imageio.backends.file import open_file
from vdsm_imageio.backends.hostconn import Connector
from vdsm_imageio.backends.http import open_http
from vdsm_imageio.backends.nbd import open_nbd
from vdsm_imageio.backends.sectorlock import SectorLocks

from .images import MiB

IMAGE_SIZE = 8 * MiB
QCOW2_CLUSTER = 64 * 1024  # qemu-img's default


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
