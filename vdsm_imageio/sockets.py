"""Socket details shared by the data server, the NBD wire reader and the
control server: kernel-side timeouts and the accept() errors that mean
"out of a resource".

A blocking socket call bounded by the kernel (``SO_RCVTIMEO``,
``SO_SNDTIMEO``) wakes us once per call, where a Python socket timeout
(non-blocking underneath) costs a ``poll`` per piece the peer moves; the
request reader, the zero-copy sender and the NBD wire reader use them.
"""

from __future__ import annotations

import errno
import socket
import struct

# Errors of accept() that mean "out of a resource", not "listener closed":
# the listener is fine, accepting again a little later succeeds.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.ENFILE, errno.EMFILE, errno.ENOBUFS, errno.ENOMEM})


def timeval(seconds: float | None) -> bytes:
    """SO_SNDTIMEO / SO_RCVTIMEO for a socket timeout (None: wait forever).

    The kernel reads zero as "no limit", so a limit rounds up to 1 us.
    """
    usec = 0 if seconds is None else max(1, round(seconds * 1_000_000))
    return struct.pack("ll", *divmod(usec, 1_000_000))


def set_kernel_timeout(sock: socket.socket, option: int, seconds: float | None) -> None:
    """Bound each blocking send (SO_SNDTIMEO) or receive (SO_RCVTIMEO) of sock.

    Only a blocking socket looks at these: the caller also makes sock
    blocking (``settimeout(None)``) for the calls it wants bounded so.
    """
    sock.setsockopt(socket.SOL_SOCKET, option, timeval(seconds))
