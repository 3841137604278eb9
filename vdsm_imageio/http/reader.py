"""Reading a connection: a small buffer for heads, a straight path for bodies.

Theory of operation: request heads are read line by line, which needs a
buffer; image bodies are megabytes, which must not go through one. A read
into a caller's buffer first takes what the small buffer holds (the start
of a body often arrives with its head); after that a large read goes
straight from the socket into the caller's buffer.

On a plain (unix socket) connection a straight read is one ``recv`` with
``MSG_WAITALL`` on a blocking socket: the kernel fills the whole buffer,
waking us once, where a socket with a Python timeout (non-blocking
underneath) costs a ``poll`` and a ``recv`` for every piece the client
wrote, and the GIL for each. The wait stays bounded: ``SO_RCVTIMEO``
carries the connection's timeout for the call, and ``abort()`` (shutdown)
ends it at once.

A TLS connection gives at most one record (16 KiB) per ``recv_into``,
whatever the buffer: a straight read loops over the records here, in one
frame, so a 4 MiB buffer costs 256 trips through this loop rather than
256 through the body's framing and this reader's checks. Each record's
wait keeps the connection's timeout (CPython's ``SSLSocket`` enforces it).
A TLS socket is never made blocking with ``SO_RCVTIMEO`` as the plain one
is: CPython retries an SSL read that the kernel's timeout interrupted
(SSL_ERROR_WANT_READ on a blocking socket) without end, so that timeout
would bound nothing. It costs little: a read polls only when no record
is waiting.
"""

from __future__ import annotations

import errno
import socket
import ssl

from ..sockets import set_kernel_timeout

# Large enough for any request head we accept in one or two reads.
BUFFER_SIZE = 64 * 1024


class SocketReader:
    def __init__(self, sock: socket.socket, size: int = BUFFER_SIZE) -> None:
        self._sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._end = 0
        self._plain = not isinstance(sock, ssl.SSLSocket)

    def prime(self, data: bytes) -> None:
        """Start with data already received (by the lobby), before the socket's."""
        if self._pos != self._end or len(data) > len(self._buf):
            raise ValueError("prime needs an empty reader and data that fits its buffer")
        self._buf[: len(data)] = data
        self._pos = 0
        self._end = len(data)

    @property
    def buffered(self) -> int:
        return self._end - self._pos

    def readline(self, limit: int) -> bytes:
        """A line with its newline; shorter only at end of stream, at most limit bytes."""
        parts: list[bytes] = []
        need = limit
        while need > 0:
            if self._pos == self._end and not self._fill():
                break
            stop = min(self._end, self._pos + need)
            newline = self._buf.find(b"\n", self._pos, stop)
            if newline >= 0:
                stop = newline + 1
            parts.append(bytes(self._view[self._pos : stop]))
            need -= stop - self._pos
            self._pos = stop
            if newline >= 0:
                break
        return b"".join(parts)

    def readinto(self, buf: memoryview) -> int:
        """Some bytes, at most len(buf); 0 only at end of stream.

        A read larger than the buffer, with nothing buffered, fills buf
        whole unless the stream ends or the timeout passes first.
        """
        if not buf:
            return 0
        if self._pos == self._end:
            if len(buf) >= len(self._buf):
                return self._recv_direct(buf)
            if not self._fill():
                return 0
        n = min(self._end - self._pos, len(buf))
        buf[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> bool:
        self._pos = 0
        self._end = self._sock.recv_into(self._view)
        return self._end > 0

    def _recv_direct(self, buf: memoryview) -> int:
        sock = self._sock
        if not self._plain:
            return _fill_records(sock, buf)
        timeout = sock.gettimeout()
        # Only a blocking socket looks at SO_RCVTIMEO, and this is the only
        # place where a connection's socket blocks on receive.
        set_kernel_timeout(sock, socket.SO_RCVTIMEO, timeout)
        sock.settimeout(None)
        try:
            return sock.recv_into(buf, len(buf), socket.MSG_WAITALL)
        except BlockingIOError:
            # SO_RCVTIMEO passed with nothing received.
            raise TimeoutError(errno.ETIMEDOUT, "timed out waiting for the client") from None
        finally:
            sock.settimeout(timeout)


def _fill_records(sock: socket.socket, buf: memoryview) -> int:
    """Fill buf from a TLS socket, record by record; short only at end of stream."""
    recv_into = sock.recv_into
    size = len(buf)
    filled = recv_into(buf)
    while 0 < filled < size:
        n = recv_into(buf[filled:])
        if n == 0:
            break
        filled += n
    return filled
