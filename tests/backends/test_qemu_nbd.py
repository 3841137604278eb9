"""One qemu-nbd server per volume: options, start failures, stop."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import nbd
import pytest

from storage.qemu_nbd import STOP_TIMEOUT, QemuNbd
from tests.support.loopfs import run
from tests.support.procs import minor_faults
from vdsm_imageio.backends.nbd import NbdBackend
from vdsm_imageio.errors import VolumeError

from .conftest import ServerMaker
from .images import MiB
from .targets import IMAGE_SIZE, make_image


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def test_stop_ends_the_process_and_removes_the_socket(cache_dir: str, socket_dir: str) -> None:
    server = QemuNbd(make_image(cache_dir), "raw", os.path.join(socket_dir, "a.sock"))
    server.start()
    pid = server.pid
    assert pid is not None and alive(pid)
    server.stop()
    assert not alive(pid)
    assert not os.path.exists(server.socket_path)
    server.stop()


def test_stop_kills_a_server_that_ignores_sigterm(cache_dir: str, socket_dir: str) -> None:
    server = QemuNbd(
        make_image(cache_dir), "raw", os.path.join(socket_dir, "b.sock"), stop_timeout=0.5
    )
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


def test_stop_kills_a_read_only_server_at_once(cache_dir: str, socket_dir: str) -> None:
    server = QemuNbd(
        make_image(cache_dir), "raw", os.path.join(socket_dir, "k.sock"), read_only=True
    )
    server.start()
    pid = server.pid
    assert pid is not None
    try:
        # Stopped, it would sit on SIGTERM until the stop timeout.
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < STOP_TIMEOUT / 2
        assert not alive(pid)
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
    for option in (
        "--persistent",
        "--shared=0",
        "--format=qcow2",
        "--cache=none",
        "--aio=native",
        "--allocation-depth",
        "--bitmap=b1",
        "--read-only",
    ):
        assert option in argv
    assert "--discard=unmap" not in argv


def test_raw_write_server_punches_and_reports_no_depth(cache_dir: str, serve: ServerMaker) -> None:
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


def test_start_with_missing_bitmap_fails(qcow2: Callable[..., str], socket_dir: str) -> None:
    server = QemuNbd(qcow2(), "qcow2", os.path.join(socket_dir, "d.sock"), bitmap="nope")
    with pytest.raises(VolumeError, match="nope"):
        server.start()
    assert server.pid is None


def test_start_with_missing_image_fails(socket_dir: str) -> None:
    server = QemuNbd(
        os.path.join(socket_dir, "missing.img"),
        "raw",
        os.path.join(socket_dir, "e.sock"),
        sd_id="sd-1",
        vol_id="vol-1",
    )
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


def test_start_with_unusable_socket_directory_fails(cache_dir: str, socket_dir: str) -> None:
    # A file where the socket's directory should be. Under the short
    # socket_dir: below the checkout the path could pass sun_path's limit,
    # which fails earlier and for another reason.
    not_a_dir = make_image(socket_dir, size=0)
    try:
        server = QemuNbd(make_image(cache_dir), "raw", os.path.join(not_a_dir, "f.sock"))
        with pytest.raises(VolumeError, match="cannot use socket"):
            server.start()
        assert server.pid is None
    finally:
        os.unlink(not_a_dir)


def faults_of_reads(image: str, server: QemuNbd, reads: int) -> int:
    """Page faults qemu-nbd takes for reads of 1 MiB, after a warm-up."""
    with server:
        assert server.pid is not None
        h = nbd.NBD()
        h.connect_unix(server.socket_path)
        try:
            size = os.path.getsize(image)
            for i in range(4):
                h.pread(MiB, i * MiB % size)
            before = minor_faults(server.pid)
            for i in range(reads):
                h.pread(MiB, i * MiB % size)
            return minor_faults(server.pid) - before
        finally:
            h.shutdown()


def test_reused_buffers_spare_qemu_nbd_fresh_pages_for_each_read(
    cache_dir: str, socket_dir: str
) -> None:
    # Data, not zeros: qemu-nbd answers a hole without reading into a buffer.
    image = os.path.join(cache_dir, "random.img")
    with open(image, "wb") as f:
        f.write(os.urandom(16 * MiB))
    reads = 128
    fresh = faults_of_reads(
        image, QemuNbd(image, "raw", os.path.join(socket_dir, "g.sock"), read_only=True), reads
    )
    reused = faults_of_reads(
        image,
        QemuNbd(
            image, "raw", os.path.join(socket_dir, "h.sock"), read_only=True, reuse_buffers=True
        ),
        reads,
    )
    # glibc's defaults: a new mapping, a fault per page, for every read.
    assert fresh >= reads * MiB // 4096 // 2
    assert reused * 4 < fresh


def test_reused_buffers_keep_tunables_set_before(
    monkeypatch: pytest.MonkeyPatch, cache_dir: str
) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    server = QemuNbd(make_image(cache_dir), "raw", "/nonexistent.sock", reuse_buffers=True)
    env = server.environment()
    assert env is not None
    tunables = env["GLIBC_TUNABLES"].split(":")
    # glibc takes the last value of a tunable: the caller's wins.
    assert tunables[-1] == "glibc.malloc.trim_threshold=1"
    assert "glibc.malloc.mmap_threshold=33554432" in tunables
    assert QemuNbd(make_image(cache_dir), "raw", "/nonexistent.sock").environment() is None
