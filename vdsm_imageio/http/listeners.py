"""Listening sockets: TLS (or plain HTTP) on TCP, plain HTTP on a unix socket."""

from __future__ import annotations

import os
import socket
import ssl
from contextlib import suppress

# A burst of connections waits in the kernel's queue while the lobby
# accepts; a full queue drops a TCP client's SYN, which costs that client a
# retransmit a second later (the kernel caps this at net.core.somaxconn).
BACKLOG = 1024


class Listener:
    """A listening socket; trusted when the OS authenticated its peers.

    The ticket API's socket is trusted: its file mode admits only vdsm, so
    its connections are authorized from accept.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        context: ssl.SSLContext | None,
        *,
        trusted: bool = False,
    ) -> None:
        self.sock = sock
        self.name = name
        self.context = context
        self.trusted = trusted

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def tcp_listener(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    *,
    name: str = "tls",
    trusted: bool = False,
) -> Listener:
    """TLS on host:port, or plain HTTP without a context; "" binds every address."""
    if host == "" and socket.has_dualstack_ipv6():
        sock = socket.create_server(
            ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=BACKLOG
        )
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    return Listener(sock, name, context, trusted=trusted)


def unix_listener(address: str, mode: int = 0o660) -> Listener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not address.startswith("\0"):
            with suppress(FileNotFoundError):
                os.unlink(address)
        sock.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, mode)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return Listener(sock, "unix", None)
