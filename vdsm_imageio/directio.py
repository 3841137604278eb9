"""Low-level pieces of direct I/O: aligned buffers, ioctls, fallocate.

Direct I/O (O_DIRECT) moves data between the device and the caller's buffer
without the page cache, so the kernel requires the file offset, the length
and the buffer address to be multiples of the device's logical block size
(open(2), "O_DIRECT"). Buffers here come from anonymous mmap: page aligned,
and a page is a multiple of every logical block size Linux supports.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import mmap
import os
import stat
import struct

# linux/fs.h
BLKSSZGET = 0x1268  # _IO(0x12, 104): logical sector size, int
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t): device size in bytes
BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a range given as two uint64

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# Errors meaning "this file system or device cannot do that": the caller
# moves on to the next, slower method instead of failing the request.
UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTTY})

# Used when a probe cannot tell: every device with 512-byte sectors also
# accepts 4096-aligned I/O, so this is always safe, at the cost of more
# read-modify-write for requests aligned only to 512.
SAFE_BLOCK_SIZE = 4096


def round_down(n: int, align: int) -> int:
    return n - n % align


def round_up(n: int, align: int) -> int:
    return round_down(n + align - 1, align)


def aligned_buffer(size: int, align: int = mmap.PAGESIZE) -> memoryview:
    """A zero-filled writable buffer of size bytes starting at an aligned address.

    The mapping is unmapped when the last view of it is released.
    """
    if size == 0:
        return memoryview(bytearray())
    if align <= mmap.PAGESIZE:
        return memoryview(mmap.mmap(-1, size))
    # Larger than a page (large-block devices): over-allocate and skip ahead.
    view = memoryview(mmap.mmap(-1, size + align))
    skip = -address(view) % align
    return view[skip : skip + size]


def address(buf: memoryview) -> int:
    """Address of a writable, non-empty buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def is_aligned(buf: memoryview, align: int) -> bool:
    """True if buf can be passed to direct I/O as is.

    Read-only buffers (bytes) cannot be inspected without copying and are
    reported unaligned, so the caller bounces them through its own buffer.
    """
    if align == 1:
        return True
    if buf.readonly or not buf.c_contiguous or buf.nbytes == 0:
        return False
    return address(buf) % align == 0


def open_aligned(path: str, flags: int) -> tuple[int, int]:
    """Open path for direct I/O; returns the descriptor and its block size.

    Block size 1 means buffered I/O: file systems without direct I/O fail
    the open with EINVAL (ramfs; tmpfs before Linux 6.6), and a few accept
    the flag but no read at any alignment.
    """
    try:
        fd = os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return os.open(path, flags | os.O_CLOEXEC), 1
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISBLK(mode):
            return fd, device_sector_size(fd)
        if not stat.S_ISREG(mode):
            return fd, 1  # Not an image: the caller refuses it.
        block_size = probe_block_size(fd)
    except BaseException:
        os.close(fd)
        raise
    if block_size is not None:
        return fd, block_size
    os.close(fd)
    return os.open(path, flags | os.O_CLOEXEC), 1


def probe_block_size(fd: int) -> int | None:
    """Smallest alignment direct reads of a regular file accept.

    Returns None when no alignment works (the caller falls back to buffered
    I/O). The kernel checks alignment only when it maps a block, so reads
    of an empty file or of a hole succeed at any alignment: the probe
    reads where data is, and answers SAFE_BLOCK_SIZE when there is none.
    """
    try:
        data = os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        return SAFE_BLOCK_SIZE if _direct_read_works(fd, 0, SAFE_BLOCK_SIZE) else None
    for size in (512, 4096):
        if _direct_read_works(fd, round_down(data, size), size):
            return size
    return None


def _direct_read_works(fd: int, offset: int, size: int) -> bool:
    try:
        os.preadv(fd, [aligned_buffer(size)], offset)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return False
    return True


def device_sector_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKSSZGET, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


def device_size(fd: int) -> int:
    buf = fcntl.ioctl(fd, BLKGETSIZE64, struct.pack("Q", 0))
    return int(struct.unpack("Q", buf)[0])


def zeroout(fd: int, offset: int, length: int) -> None:
    """Zero a sector-aligned range of a block device (BLKZEROOUT).

    The kernel uses the device's write-zeroes command when it has one and
    writes zero pages itself otherwise; the page cache is invalidated.
    """
    fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode, which os.posix_fallocate cannot pass."""
    if _libc_fallocate()(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@functools.cache
def _libc_fallocate() -> ctypes._NamedFuncPointer:
    libc = ctypes.CDLL(None, use_errno=True)
    func = libc.fallocate64
    func.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    func.restype = ctypes.c_int
    return func
