"""Looking at images from outside a backend, and moving bytes through one."""

from __future__ import annotations

import ctypes
import os
import random

from vdsm_imageio.backends import Backend, ZeroExtent

KiB = 1024
MiB = 1024 * KiB
# Punching a hole can split a file's extents so that ext4 allocates an
# extent tree block (4 KiB) while it frees the data: allow a little.
METADATA_SLACK = 64 * KiB


def pattern(length: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(length)


def write(backend: Backend, offset: int, data: bytes) -> None:
    buf = backend.buffer(len(data))
    buf[:] = data
    assert backend.write(offset, buf) == len(data)


def read(backend: Backend, offset: int, length: int) -> bytes:
    buf = backend.buffer(length)
    n = backend.readinto(offset, buf)
    return bytes(buf[:n])


def address(buf: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


def holes(path: str) -> list[tuple[int, int]]:
    """Hole runs of a file, found with lseek(2) independently of the backend."""
    runs = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            if hole >= size:
                break
            try:
                pos = os.lseek(fd, hole, os.SEEK_DATA)
            except OSError:
                pos = size
            runs.append((hole, pos))
    finally:
        os.close(fd)
    return runs


def joined(extents: list[ZeroExtent]) -> list[ZeroExtent]:
    """Expected extents with neighbours of one kind joined, as backends report them."""
    out: list[ZeroExtent] = []
    for e in extents:
        if out and (out[-1].zero, out[-1].hole) == (e.zero, e.hole):
            last = out.pop()
            e = ZeroExtent(last.start, last.length + e.length, zero=e.zero, hole=e.hole)
        out.append(e)
    return out
