"""Positional I/O of any offset, length and buffer on an aligned descriptor.

A descriptor opened with O_DIRECT accepts only offsets, lengths and buffer
addresses that are multiples of its block size (see ``directio``). Aligned
requests into aligned buffers go straight to the kernel. The rest of a
request goes through a scratch buffer: reads read the covering aligned
range and copy out; writes read-modify-write the partial first and last
blocks. Unaligned writes to the same block from two descriptors race, as
on any block device; clients that care write aligned ranges.

A regular file has no fixed size. A write past its end extends it, and
when the read-modify-write pads the last block of a file whose size is not
block aligned, the padding is cut off again.

The caller owns the descriptor and translates OSError.
"""

from __future__ import annotations

import errno
import os

from vdsm_imageio.backends import directio
from vdsm_imageio.backends.directio import round_down, round_up

# Large enough that an unaligned request costs a few copies, not many syscalls.
SCRATCH_SIZE = 1024 * 1024


class AlignedIO:
    def __init__(self, fd: int, *, block_size: int, regular_file: bool) -> None:
        self._fd = fd
        self._bs = block_size
        self._regular_file = regular_file
        self._scratch: memoryview | None = None

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Read up to len(buf) bytes at offset; fewer only at end of file.

        A short read from the kernel means end of file: regular files and
        block devices return less only there.
        """
        if not self._is_direct_ok(offset, buf):
            return self._bounce_read(offset, buf)
        body = round_down(len(buf), self._bs)
        got = os.preadv(self._fd, [buf[:body]], offset) if body else 0
        if got < body:
            return got
        return got + self._bounce_read(offset + got, buf[got:])

    def write(self, offset: int, buf: memoryview) -> None:
        """Write all of buf at offset."""
        end = offset + len(buf)
        old_size = os.fstat(self._fd).st_size if self._pads(end) else None
        if self._is_direct_ok(offset, buf):
            body = round_down(len(buf), self._bs)
            self._pwrite_all(offset, buf[:body])
            self._bounce_write(offset + body, buf[body:])
        else:
            self._bounce_write(offset, buf)
        if old_size is not None:
            self._trim_padding(old_size, end)

    def _is_direct_ok(self, offset: int, buf: memoryview) -> bool:
        bs = self._bs
        return bs == 1 or (offset % bs == 0 and directio.is_aligned(buf, bs))

    def _pads(self, end: int) -> bool:
        return self._regular_file and end % self._bs != 0

    def _bounce_read(self, offset: int, buf: memoryview) -> int:
        bs, scratch = self._bs, self._scratch_buffer()
        done = 0
        while done < len(buf):
            start = round_down(offset + done, bs)
            skip = offset + done - start
            want = min(len(buf) - done, len(scratch) - skip)
            got = os.preadv(self._fd, [scratch[: round_up(skip + want, bs)]], start)
            n = max(0, min(got - skip, want))
            buf[done : done + n] = scratch[skip : skip + n]
            done += n
            if n < want:
                break
        return done

    def _bounce_write(self, offset: int, buf: memoryview) -> None:
        bs, scratch = self._bs, self._scratch_buffer()
        done = 0
        while done < len(buf):
            start = round_down(offset + done, bs)
            skip = offset + done - start
            want = min(len(buf) - done, len(scratch) - skip)
            span = round_up(skip + want, bs)
            if skip:
                self._read_block(start, scratch[:bs])
            # The last block is partial too, unless the first one covered it.
            if (skip + want) % bs and not (skip and span == bs):
                self._read_block(start + span - bs, scratch[span - bs : span])
            scratch[skip : skip + want] = buf[done : done + want]
            self._pwrite_all(start, scratch[:span])
            done += want

    def _read_block(self, offset: int, block: memoryview) -> None:
        got = os.preadv(self._fd, [block], offset)
        # Past the end of a file reads as zeros, as it will after extending.
        block[got:] = bytes(len(block) - got)

    def _pwrite_all(self, offset: int, buf: memoryview) -> None:
        done = 0
        while done < len(buf):
            n = os.pwritev(self._fd, [buf[done:]], offset + done)
            if n == 0:
                raise OSError(errno.EIO, "write made no progress")
            done += n

    def _trim_padding(self, old_size: int, end: int) -> None:
        # The last block was written whole; if that grew the file past what
        # the caller wrote, cut it back. Comparing with the padded size
        # leaves alone a file that another writer has extended further.
        padded = round_up(end, self._bs)
        if os.fstat(self._fd).st_size == padded > max(old_size, end):
            os.ftruncate(self._fd, max(old_size, end))

    def _scratch_buffer(self) -> memoryview:
        if self._scratch is None:
            self._scratch = directio.aligned_buffer(SCRATCH_SIZE, self._bs)
        return self._scratch
