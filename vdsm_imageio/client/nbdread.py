"""Reads from the local qemu-nbd with several commands in flight.

One NBD read at a time leaves qemu-nbd idle between commands and costs two
copies in the binding (``pread`` returns new bytes). Here a buffer is cut
into parts and one ``aio_pread`` per part goes out at once, each straight
into its part of the buffer: qemu-nbd serves them concurrently, and the
data is copied once, from the socket into the buffer. Measured on a qcow2
on tmpfs: 2.5 times the throughput of ``pread`` on one connection.

libnbd 1.14's binding never releases a buffer given to ``aio_pread`` (the
export and one reference stay): the parts are made once per reader and
reused, so what stays is a reference count, and the buffer lives as long
as the reader, which is as long as the client's process needs it.
"""

from __future__ import annotations

from typing import Any

import nbd

from ..directio import address
from ..errors import BackendError

KiB = 1024
MIN_PART = 256 * KiB
PARTS = 4


class PipelinedReader:
    """A libnbd connection of its own and the one buffer it reads into."""

    def __init__(self, socket_path: str, size: int, parts: int = PARTS) -> None:
        self.buffer = memoryview(bytearray(size))
        step = max(MIN_PART, size // parts)
        self._parts: list[tuple[int, int, Any]] = []
        for start in range(0, size, step):
            end = min(size, start + step)
            self._parts.append((start, end, nbd.Buffer.from_buffer(self.buffer[start:end])))
        self._h: Any = nbd.NBD()
        # libnbd zeroes a read's buffer before sending the command, in case
        # a caller uses the buffer of a failed read: ours raises instead,
        # and a successful read fills every byte.
        self._h.set_pread_initialize(False)
        try:
            self._h.connect_unix(socket_path)
        except nbd.Error as e:
            raise BackendError(reason=f"connect failed: {e}") from None

    def owns(self, view: memoryview) -> bool:
        """True if view starts where the reader's buffer starts."""
        return (
            view.obj is self.buffer.obj
            and 0 < len(view) <= len(self.buffer)
            and address(view) == address(self.buffer)
        )

    def readinto(self, offset: int, view: memoryview) -> int:
        """Fill view, a prefix of ``buffer``, with the image at offset."""
        length = len(view)
        cookies = []
        try:
            for start, end, part in self._parts:
                if start >= length:
                    break
                if end > length:
                    # The last part of a short read: a buffer of its own
                    # (made rarely: at the end of a range).
                    part = nbd.Buffer.from_buffer(self.buffer[start:length])
                cookies.append(self._h.aio_pread(part, offset + start))
            for cookie in cookies:
                while not self._h.aio_command_completed(cookie):
                    self._h.poll(-1)
        except nbd.Error as e:
            raise BackendError(reason=f"read failed: {e}") from None
        return length

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            try:
                h.shutdown()
            except nbd.Error:
                pass
