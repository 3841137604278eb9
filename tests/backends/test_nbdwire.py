"""Spliced NBD reads: our own NBD connection against a real qemu-nbd."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest

from storage.qemu_nbd import QemuNbd
from vdsm_imageio import zerocopy
from vdsm_imageio.backends.nbd import open_nbd
from vdsm_imageio.backends.nbdwire import WireReader
from vdsm_imageio.errors import BackendError

from .conftest import ServerMaker
from .images import MiB, pattern
from .targets import make_image

SIZE = 8 * MiB


@pytest.fixture
def image(cache_dir: str) -> str:
    path = make_image(cache_dir, SIZE)
    with open(path, "r+b") as f:
        f.write(pattern(SIZE, seed=11))
    return path


@pytest.fixture
def server(image: str, serve: ServerMaker) -> QemuNbd:
    return serve(image, read_only=True)


def export(server: QemuNbd) -> tuple[str, str]:
    path, _, name = server.url[len("nbd:unix:") :].partition(":exportname=")
    return path, name


def piped(reader: WireReader, offset: int, length: int) -> bytes:
    rfd, wfd = os.pipe()
    out = bytearray()
    try:

        def drain() -> None:
            while chunk := os.read(rfd, MiB):
                out.extend(chunk)

        t = threading.Thread(target=drain)
        t.start()
        try:
            reader.fill(wfd, offset, length)
        finally:
            os.close(wfd)
            wfd = -1
            t.join(10)
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)
    return bytes(out)


def test_handshake_learns_the_size_and_reads_land_in_the_pipe(server: QemuNbd) -> None:
    reader = WireReader(*export(server))
    try:
        assert reader.size == SIZE
        data = pattern(SIZE, seed=11)
        assert piped(reader, 0, MiB) == data[:MiB]
        # The connection stays in step for the next read.
        assert piped(reader, 3 * MiB + 5, 1000) == data[3 * MiB + 5 : 3 * MiB + 1005]
    finally:
        reader.close()


def test_read_outside_the_export_is_refused(server: QemuNbd) -> None:
    reader = WireReader(*export(server))
    try:
        with pytest.raises(BackendError, match="outside the export"):
            reader.start_read(SIZE - 10, 20)
    finally:
        reader.close()


def test_unfinished_read_leaves_the_connection_unusable(server: QemuNbd) -> None:
    reader = WireReader(*export(server))
    try:
        reader.start_read(0, MiB)
        with pytest.raises(BackendError, match="out of step"):
            reader.start_read(0, 10)
    finally:
        reader.close()


def test_unknown_export_names_the_export(server: QemuNbd) -> None:
    path, _ = export(server)
    with pytest.raises(BackendError, match="'nope' refused"):
        WireReader(path, "nope")


def test_missing_socket_is_a_backend_error(socket_dir: str) -> None:
    with pytest.raises(BackendError, match="NBD connect failed"):
        WireReader(os.path.join(socket_dir, "missing.sock"), "x")


def test_backend_splices_a_download_through_its_own_connections(server: QemuNbd) -> None:
    backend = open_nbd(server.url, mode="r", sparse=False, dirty=False)
    readers = [backend.open_splice_reader() for _ in range(2)]
    a, b = socket.socketpair()
    got = bytearray()
    try:
        assert all(r is not None for r in readers)

        def receive() -> None:
            while chunk := b.recv(MiB):
                got.extend(chunk)

        t = threading.Thread(target=receive)
        t.start()
        a.settimeout(10)
        with contextlib.closing(a):
            zerocopy.send_from(
                [r.fill for r in readers if r is not None], 4096, SIZE - 8192, a, lambda n: None
            )
        t.join(10)
        assert bytes(got) == pattern(SIZE, seed=11)[4096 : SIZE - 4096]
    finally:
        for r in readers:
            if r is not None:
                r.close()
        backend.close()
        b.close()


def test_server_gone_mid_download_is_a_backend_error(server: QemuNbd) -> None:
    reader = WireReader(*export(server))
    a, b = socket.socketpair()
    try:
        threading.Thread(
            target=lambda: [None for _ in iter(lambda: b.recv(MiB), b"")], daemon=True
        ).start()
        server.stop()
        a.settimeout(10)
        with pytest.raises(BackendError):
            zerocopy.send_from([reader.fill], 0, 4 * MiB, a, lambda n: None)
    finally:
        reader.close()
        a.close()
        b.close()
