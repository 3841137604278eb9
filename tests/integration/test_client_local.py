"""The client's local image: the qemu-nbd it starts for a qcow2."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.clientrun import MiB, run
from tests.support.procs import minor_faults, running
from vdsm_imageio.client.local import LocalImage


def qcow2_of(tmp_path: Path, data: bytes) -> tuple[Path, Path]:
    """A raw file holding data and its qcow2 copy."""
    raw = tmp_path / "src.raw"
    raw.write_bytes(data)
    image = tmp_path / "src.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image))
    return raw, image


def test_qcow2_source_reads_spare_qemu_nbd_fresh_pages(tmp_path: Path) -> None:
    # Data, not zeros: qemu-nbd answers a hole without reading into a buffer.
    _, image = qcow2_of(tmp_path, os.urandom(16 * MiB))
    reads = 128
    with LocalImage(str(image), "qcow2", writable=False) as local, local.open() as h:
        (pid,) = [pid for pid, argv in running(b"qemu-nbd") if str(image).encode() in argv]
        buf = h.buffer(MiB)
        h.readinto(0, buf)
        faults = minor_faults(pid)
        for i in range(reads):
            assert h.readinto(i * MiB % (16 * MiB), buf) == MiB
        faults = minor_faults(pid) - faults
    # glibc's defaults would map, fault in and zero fresh pages for every
    # request: a fault per page read.
    assert faults < reads * MiB // 4096 // 4


def test_qcow2_source_splices_its_data_and_raw_does_not(tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    raw, image = qcow2_of(tmp_path, data)
    with LocalImage(str(image), "qcow2", writable=False) as local, local.open() as h:
        fills = h.splice_fills()
        assert fills is not None and len(fills) >= 2
        rfd, wfd = os.pipe()
        try:
            # Each lane on its own connection: both in step, in any order.
            fills[1](wfd, 3 * MiB, 4096)
            fills[0](wfd, MiB + 512, 1000)
            got = os.read(rfd, 8192)
        finally:
            os.close(rfd)
            os.close(wfd)
        assert got == data[3 * MiB : 3 * MiB + 4096] + data[MiB + 512 : MiB + 1512]
    with LocalImage(str(raw), "raw", writable=False) as local, local.open() as h:
        assert h.splice_fills() is None


def test_pipelined_reads_skip_libnbd_zeroing_and_fill_the_buffer(tmp_path: Path) -> None:
    # libnbd zeroes every read buffer first unless told not to; a
    # successful read fills all of it, so the zeroing was a second pass
    # over each buffer for nothing.
    data = os.urandom(4 * MiB)
    _, image = qcow2_of(tmp_path, data)
    with LocalImage(str(image), "qcow2", writable=False) as local, local.open() as h:
        buf = h.buffer(4 * MiB)
        buf[:] = b"\xff" * len(buf)
        assert h.readinto(0, buf) == 4 * MiB
        assert bytes(buf) == data
        reader = h._reader
        assert reader is not None
        assert reader._h.get_pread_initialize() is False
