"""NBD reads whose payload never enters user space.

Theory of operation: libnbd receives a read's data into memory it owns, so
an NBD download through it costs a copy in, and our buffer a copy more. On
the wire, a read answered with a simple reply is a 16-byte header followed
by exactly the requested bytes; a client that reads only the header can
``splice`` the payload from the NBD socket into a pipe, and from there into
the HTTP client's socket (``vdsm_imageio.zerocopy``): the daemon moves page
references, the kernel does the rest.

This module speaks just enough of the NBD protocol for that: the fixed
newstyle handshake, ``NBD_OPT_GO`` for one export (no structured replies,
so every read gets one simple reply carrying all its data), ``NBD_CMD_READ``
one at a time, and ``NBD_CMD_DISC``. Everything else (writes, zero, flush,
block status) goes through libnbd in ``vdsm_imageio.backends.nbd``.

A connection whose payload was not fully consumed is out of step with the
server: it refuses further reads and is only good for closing.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from vdsm_imageio import zerocopy
from vdsm_imageio.errors import BackendError
from vdsm_imageio.sockets import set_kernel_timeout

INIT_MAGIC = b"NBDMAGIC"
OPT_MAGIC = b"IHAVEOPT"
REPLY_OPT_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
INFO_EXPORT = 0
CMD_READ = 0
CMD_DISC = 2
# Longest option reply we read; qemu-nbd's are a few dozen bytes.
MAX_OPTION_REPLY = 64 * 1024

_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
_OPTION_REPLY = struct.Struct(">QIII")


class WireReader:
    """One NBD connection over a unix socket, for spliced reads."""

    def __init__(self, path: str, export: str, timeout: float = 60.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._cookie = 0
        self._in_step = True
        self.size = 0
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
            self._handshake(export)
        except OSError as e:
            self._sock.close()
            raise BackendError(reason=f"NBD connect failed: {e.strerror or e}") from None
        except BackendError:
            self._sock.close()
            raise
        # Payloads are spliced from a blocking socket; the timeout bounds
        # each wait in the kernel instead.
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            set_kernel_timeout(self._sock, option, timeout)
        self._sock.settimeout(None)

    def fileno(self) -> int:
        return self._sock.fileno()

    def start_read(self, offset: int, length: int) -> None:
        """Ask for [offset, offset+length); on return exactly length bytes
        of payload are the next bytes of fileno(), to be consumed by the caller."""
        if not self._in_step:
            raise BackendError(reason="NBD connection out of step after an unfinished read")
        if offset < 0 or length <= 0 or offset + length > self.size:
            raise BackendError(
                reason=f"NBD read of {length} bytes at {offset} is outside "
                f"the export of {self.size} bytes"
            )
        self._cookie += 1
        self._in_step = False
        try:
            self._sock.sendall(
                _REQUEST.pack(REQUEST_MAGIC, 0, CMD_READ, self._cookie, offset, length)
            )
            magic, error, cookie = _REPLY.unpack(self._recv_exactly(_REPLY.size))
        except OSError as e:
            raise BackendError(reason=f"NBD read failed: {e.strerror or e}") from None
        if magic != SIMPLE_REPLY_MAGIC or cookie != self._cookie:
            raise BackendError(reason="NBD server sent an unexpected reply")
        if error:
            # An error reply carries no payload: the connection stays usable.
            self._in_step = True
            raise BackendError(reason=f"NBD read failed: {os.strerror(error)}")

    def finished_read(self) -> None:
        """The caller consumed the whole payload of the last read."""
        self._in_step = True

    def fill(self, wfd: int, offset: int, length: int) -> int:
        """Splice [offset, offset+length) of the export into the pipe wfd."""
        self.start_read(offset, length)
        try:
            zerocopy.fill_from_stream(self.fileno(), wfd, length)
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise
            raise BackendError(reason=f"NBD read failed: {e.strerror or e}") from None
        self.finished_read()
        return length

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        try:
            if self._in_step:
                self._sock.sendall(_REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        finally:
            self._sock.close()

    # Handshake.

    def _handshake(self, export: str) -> None:
        head = self._recv_exactly(18)
        if head[:8] != INIT_MAGIC or head[8:16] != OPT_MAGIC:
            raise BackendError(reason="not an NBD server with the newstyle handshake")
        (server_flags,) = struct.unpack(">H", head[16:])
        if not server_flags & FLAG_FIXED_NEWSTYLE:
            raise BackendError(reason="NBD server lacks the fixed newstyle handshake")
        client_flags = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES)
        name = export.encode()
        # NBD_OPT_GO: export name, and no information requests beyond the
        # export's size and flags, which the server always sends.
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self._sock.sendall(
            struct.pack(">I", client_flags)
            + OPT_MAGIC
            + struct.pack(">II", OPT_GO, len(data))
            + data
        )
        while True:
            magic, option, reply, length = _OPTION_REPLY.unpack(
                self._recv_exactly(_OPTION_REPLY.size)
            )
            if magic != REPLY_OPT_MAGIC or option != OPT_GO or length > MAX_OPTION_REPLY:
                raise BackendError(reason="NBD server sent a malformed option reply")
            payload = self._recv_exactly(length)
            if reply & REP_FLAG_ERROR:
                message = payload.decode(errors="replace") or f"error {reply & 0xFFFF}"
                raise BackendError(reason=f"NBD export {export!r} refused: {message}")
            if reply == REP_INFO and len(payload) >= 12:
                (info,) = struct.unpack(">H", payload[:2])
                if info == INFO_EXPORT:
                    (self.size,) = struct.unpack(">Q", payload[2:10])
            elif reply == REP_ACK:
                return

    def _recv_exactly(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise OSError(errno.ECONNRESET, "NBD server closed the connection")
            data += chunk
        return bytes(data)
