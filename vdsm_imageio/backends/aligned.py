"""Positional I/O of any offset, length and buffer on an aligned descriptor.

A descriptor opened with O_DIRECT accepts only offsets, lengths and buffer
addresses that are multiples of its block size (see ``directio``). Aligned
requests into aligned buffers go straight to the kernel. The rest of a
request goes through a scratch buffer: reads read the covering aligned
range and copy out; writes read-modify-write the partial first and last
blocks, each under an exclusive range of the image's ``RangeLock``, and
write whole blocks under a shared one (see ``sectorlock``), so writers on
other descriptors of the same image never lose each other's bytes.

A regular file has no fixed size. A write past its end extends it, and
when the read-modify-write pads the last block of a file whose size is not
block aligned, the padding is cut off again.

The caller owns the descriptor and translates OSError.
"""

from __future__ import annotations

import errno
import os

from vdsm_imageio import directio
from vdsm_imageio.backends.sectorlock import END, RangeLock
from vdsm_imageio.directio import round_down, round_up

# Large enough that an unaligned request costs a few copies, not many syscalls.
SCRATCH_SIZE = 1024 * 1024


class AlignedIO:
    def __init__(self, fd: int, *, block_size: int, regular_file: bool, ranges: RangeLock) -> None:
        self._fd = fd
        self._bs = block_size
        self._regular_file = regular_file
        self._ranges = ranges
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
        """Write all of buf at offset.

        At most two blocks are partial, the first and the last; they are
        rewritten one after the other, each under a range of its own.
        """
        bs = self._bs
        end = offset + len(buf)
        head_end = min(round_up(offset, bs), end)
        tail_start = max(round_down(end, bs), head_end)
        if offset < head_end:
            self._write_partial(offset, buf[: head_end - offset])
        if head_end < tail_start:
            self._write_blocks(head_end, buf[head_end - offset : tail_start - offset])
        if tail_start < end:
            self._write_partial(tail_start, buf[tail_start - offset :])

    def _is_direct_ok(self, offset: int, buf: memoryview) -> bool:
        bs = self._bs
        return bs == 1 or (offset % bs == 0 and directio.is_aligned(buf, bs))

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

    def _write_blocks(self, offset: int, buf: memoryview) -> None:
        """Write whole blocks: they replace what was there, nothing to read."""
        if directio.is_aligned(buf, self._bs):
            with self._ranges.shared(offset, offset + len(buf)):
                self._pwrite_all(offset, buf)
            return
        scratch = self._scratch_buffer()
        done = 0
        while done < len(buf):
            n = min(len(buf) - done, len(scratch))
            scratch[:n] = buf[done : done + n]
            with self._ranges.shared(offset + done, offset + done + n):
                self._pwrite_all(offset + done, scratch[:n])
            done += n

    def _write_partial(self, offset: int, piece: memoryview) -> None:
        """Read-modify-write part of one block."""
        start = round_down(offset, self._bs)
        stop = start + self._bs
        if not self._regular_file:
            with self._ranges.exclusive(start, stop):
                self._rewrite(start, offset, piece)
            return
        if self._size() >= stop:
            with self._ranges.exclusive(start, stop):
                # Look again: a writer cutting its padding may have shrunk it.
                if self._size() >= stop:
                    self._rewrite(start, offset, piece)
                    return
        # Writing the block whole grows the file past its end, and the
        # padding is cut off after: nobody may change the size meanwhile, so
        # the range reaches past any end (every write beyond conflicts).
        with self._ranges.exclusive(start, END):
            size = self._size()
            self._rewrite(start, offset, piece)
            if size < stop:
                os.ftruncate(self._fd, max(size, offset + len(piece)))

    def _rewrite(self, start: int, offset: int, piece: memoryview) -> None:
        block = self._scratch_buffer()[: self._bs]
        self._read_block(start, block)
        block[offset - start : offset - start + len(piece)] = piece
        self._pwrite_all(start, block)

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

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

    def _scratch_buffer(self) -> memoryview:
        if self._scratch is None:
            self._scratch = directio.aligned_buffer(SCRATCH_SIZE, self._bs)
        return self._scratch
