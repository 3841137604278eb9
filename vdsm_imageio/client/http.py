"""Connections to the transfer URL: TLS (or plain HTTP), and the unix socket.

A transfer URL is ``https://HOST:PORT/images/TICKET``. Its path holds the
ticket id, the transfer's only secret: nothing here logs or prints it.

The fast path: OPTIONS tells the daemon's unix socket (an abstract name).
An abstract name means something only on the host that bound it, and the
default name is the same on every host, so the client switches to it only
when its TCP connection is local (both ends have one address) and the
socket answers OPTIONS for the ticket; otherwise it stays on TCP.

Foreign errors (ssl, OSError, http.client) are translated here, once, into
``client.errors``.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from .. import tls
from ..unixhttp import UnixHTTPConnection as UnixHTTPConnection
from .errors import ConnectionLost, ProtocolError, Unreachable, Untrusted, UsageError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
# Longer than any single request of ours takes on a live server; a server
# that says nothing for this long is gone.
IO_TIMEOUT = 120.0


@dataclass(frozen=True)
class TransferUrl:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def server(self) -> str:
        """host:port, safe to print (no ticket)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(text: str) -> TransferUrl:
    """A transfer URL; UsageError for anything else."""
    u = urllib.parse.urlsplit(text)
    if u.scheme not in ("https", "http") or not u.hostname:
        raise UsageError(reason="the transfer URL must be https://HOST[:PORT]/images/TICKET")
    parts = u.path.split("/")
    if len(parts) != 3 or parts[1] != "images" or not parts[2]:
        raise UsageError(reason="the transfer URL must be https://HOST[:PORT]/images/TICKET")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise UsageError(reason="the transfer URL has an invalid port") from None
    return TransferUrl(u.scheme, u.hostname, port, u.path)


class Endpoint:
    """Opens connections to one transfer URL, over TCP or the unix socket."""

    def __init__(self, url: TransferUrl, *, cafile: str | None, insecure: bool) -> None:
        self.url = url
        self.unix_socket: str | None = None
        self._context: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._context = _context(cafile, insecure)

    @property
    def transport(self) -> str:
        return "unix" if self.unix_socket else url_transport(self.url)

    def connect(self) -> http.client.HTTPConnection:
        """A connected connection; errors translated."""
        conn = self._new()
        with self.errors(connecting=True):
            try:
                conn.connect()
            except BaseException:
                conn.close()
                raise
        # The connect timeout is short; requests may wait on slow storage.
        assert conn.sock is not None
        conn.sock.settimeout(IO_TIMEOUT)
        return conn

    def _new(self) -> http.client.HTTPConnection:
        if self.unix_socket:
            return UnixHTTPConnection(self.unix_socket, timeout=CONNECT_TIMEOUT)
        if self._context is not None:
            return http.client.HTTPSConnection(
                self.url.host, self.url.port, timeout=CONNECT_TIMEOUT, context=self._context
            )
        return http.client.HTTPConnection(self.url.host, self.url.port, timeout=CONNECT_TIMEOUT)

    def use_unix_socket(self, address: str, tcp: http.client.HTTPConnection) -> bool:
        """Switch to the daemon's unix socket if tcp shows we are on its host."""
        if not address or not is_local(tcp):
            return False
        try:
            conn = UnixHTTPConnection(address, timeout=CONNECT_TIMEOUT)
            conn.connect()
        except OSError as e:
            log.info("UNIX socket not reachable, staying on %s reason=%s", self.transport, e)
            return False
        conn.close()
        self.unix_socket = address
        return True

    @contextlib.contextmanager
    def errors(self, *, connecting: bool = False) -> Iterator[None]:
        """Translate what the socket, TLS and http.client raise."""
        server = self.url.server if not self.unix_socket else "the local unix socket"
        try:
            yield
        except ssl.SSLCertVerificationError as e:
            raise Untrusted(server=server, reason=e.verify_message or str(e)) from None
        except ssl.SSLError as e:
            raise Unreachable(server=server, reason=f"TLS failed: {e.reason or e}") from None
        except http.client.RemoteDisconnected as e:
            raise ConnectionLost(server=server, reason=str(e) or "closed by the server") from None
        except http.client.IncompleteRead as e:
            reason = f"the reply ended after {len(e.partial)} bytes"
            raise ConnectionLost(server=server, reason=reason) from None
        except http.client.HTTPException as e:
            raise ProtocolError(server=server, reason=f"{type(e).__name__}: {e}") from None
        except TimeoutError:
            cls = Unreachable if connecting else ConnectionLost
            raise cls(server=server, reason="timed out") from None
        except OSError as e:
            cls = Unreachable if connecting else ConnectionLost
            raise cls(server=server, reason=e.strerror or str(e)) from None


def url_transport(url: TransferUrl) -> str:
    return "tls" if url.scheme == "https" else "tcp"


def is_local(conn: http.client.HTTPConnection) -> bool:
    """True if both ends of the connection have the same address."""
    sock = conn.sock
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    return bool(sock.getsockname()[0] == sock.getpeername()[0])


def _context(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    try:
        ctx = tls.client_context(cafile)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(reason=f"cannot load the CA file {cafile}: {e}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
