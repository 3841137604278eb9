"""One keep-alive HTTP connection to a host daemon: TLS, or its unix socket.

Theory of operation: the http backend (``backends.http``) owns one
``HostConnection`` per client connection of the proxy. It connects on the
first request, verifying the host's certificate against the proxy's CA
(``Connector``, one TLS context for the process), and keeps the
connection for the next requests. A connection the host closed while it
sat idle (its inactivity timeout, a restart) is noticed before it is used
again: the socket reads as ready with nothing to serve. When a request
still meets a closed connection before any reply arrives (the host closed
it just then, or its admission dropped it), it is sent once more on a new
connection; every request of the backend is idempotent (a PUT names its
range), so the host may see it twice safely. A streamed body is not sent
twice: only its head is retried.

When the host answers from this machine (both ends of the TLS connection
have one address) and advertises a unix socket that knows the ticket, the
connection moves there: no TLS between two processes of one host.

Foreign errors (socket, ssl, http.client) become the Host* domain errors
here, once. Nothing here logs a request target: it holds the host's
ticket id, the transfer's secret.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import tls
from ..errors import HostError, HostGone, HostTimeout, HostUnreachable, HostUntrusted
from ..unixhttp import UnixHTTPConnection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostUrl:
    """https://host:port/images/<ticket> taken apart; ``server`` is safe to log."""

    host: str
    port: int
    path: str

    @property
    def server(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_PATH = re.compile(r"/images/[^/]+/?")


def parse_url(url: str) -> HostUrl:
    """ValueError unless url is a transfer URL, https://HOST[:PORT]/images/TICKET."""
    parts = urlsplit(url)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or not _PATH.fullmatch(parts.path)
    ):
        raise ValueError("expected a transfer URL, https://HOST[:PORT]/images/TICKET")
    return HostUrl(parts.hostname, parts.port or 443, parts.path.rstrip("/"))


class Connector:
    """How the service reaches host daemons ([backend_http]); one per process.

    The TLS context is built once, on first use: loading the CA costs more
    than a handshake, and a host that never proxies needs no CA file.
    """

    def __init__(
        self,
        *,
        ca_file: str | None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 60.0,
        unix_socket: bool = True,
    ) -> None:
        self._ca_file = ca_file
        self._cert_file = cert_file
        self._key_file = key_file
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.unix_socket = unix_socket
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def context(self, server: str) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                try:
                    self._context = tls.client_context(
                        self._ca_file, cert_file=self._cert_file, key_file=self._key_file or None
                    )
                except (OSError, ssl.SSLError) as e:
                    log.error("HOST cannot load certificates ca_file=%s error=%s", self._ca_file, e)
                    raise HostUntrusted(
                        host=server, reason=f"cannot load [backend_http] certificates: {e}"
                    ) from None
            return self._context


class HostConnection:
    """A keep-alive connection to one host daemon; owned by one backend.

    ``abort`` may be called from any thread; everything else from the
    thread that runs the backend's request.
    """

    def __init__(self, connector: Connector, url: HostUrl, *, transfer_id: str) -> None:
        self._connector = connector
        self.url = url
        self.transfer_id = transfer_id
        self._unix: str | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False

    @property
    def server(self) -> str:
        """Who the errors and logs name: the host's address, never its ticket."""
        return f"{self.url.server} (unix socket)" if self._unix else self.url.server

    @property
    def timeout(self) -> float:
        """Seconds the host may stay silent during a request."""
        return self._connector.timeout

    @property
    def transport(self) -> str:
        return "unix" if self._unix else "tls"

    # Requests.

    def request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        """Send a whole request and return the reply once its head arrived;
        timeout, if given, bounds the wait for the head instead of
        [backend_http] timeout (a reply the host sends only when done)."""
        for attempt in (1, 2):
            try:
                conn = self.ready()
                with self.errors(timeout=timeout):
                    if timeout is not None and conn.sock is not None:
                        conn.sock.settimeout(timeout)
                    try:
                        conn.request(method, target, body=body, headers=headers or {})
                        return conn.getresponse()
                    finally:
                        if timeout is not None and conn.sock is not None:
                            conn.sock.settimeout(self._connector.timeout)
            except (HostGone, HostUnreachable) as e:
                self._retry_or_raise(e, attempt)
        raise AssertionError("unreachable")

    def begin(self, method: str, target: str, headers: dict[str, str]) -> None:
        """Send a request head; the body follows with ``send``."""
        for attempt in (1, 2):
            try:
                conn = self.ready()
                with self.errors():
                    conn.putrequest(method, target, skip_accept_encoding=True)
                    for name, value in headers.items():
                        conn.putheader(name, value)
                    conn.endheaders()
                return
            except (HostGone, HostUnreachable) as e:
                self._retry_or_raise(e, attempt)

    def _retry_or_raise(self, error: HostError, attempt: int) -> None:
        """A connection lost before the host replied: a keep-alive it
        closed, or one its admission dropped while many opened at once (all
        of a proxy's connections come from one address). Once more on a new
        connection; the request has not been answered, and is idempotent."""
        self.close()
        if attempt > 1 or isinstance(error, HostUntrusted) or self._aborted:
            raise error
        log.info(
            "HOST reconnect host=%s transfer=%s reason=%s", self.server, self.transfer_id, error
        )

    def send(self, data: bytes | memoryview) -> None:
        conn = self._live()
        with self.errors():
            conn.send(data)

    def response(self) -> http.client.HTTPResponse:
        conn = self._live()
        with self.errors():
            return conn.getresponse()

    # The connection.

    def ready(self) -> http.client.HTTPConnection:
        """A connection ready for a request: the last one unless the host
        closed it meanwhile, else a new one."""
        if self._aborted:
            raise HostGone(host=self.server, reason="the request was canceled")
        conn = self._conn
        if conn is not None and conn.sock is not None and not _readable(conn.sock):
            return conn
        if conn is not None:
            log.debug("HOST stale connection host=%s transfer=%s", self.server, self.transfer_id)
            self.close()
        self._conn = self._connect()
        return self._conn

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        timeout = self._connector.connect_timeout
        if self._unix:
            conn = UnixHTTPConnection(self._unix, timeout)
        else:
            context = self._connector.context(self.server)
            conn = http.client.HTTPSConnection(
                self.url.host, self.url.port, timeout=timeout, context=context
            )
        with self.errors(connecting=True):
            try:
                conn.connect()
            except BaseException:
                conn.close()
                raise
        assert conn.sock is not None
        # The connect timeout is short; a reply may wait on the host's storage.
        conn.sock.settimeout(self._connector.timeout)
        log.debug(
            "HOST connected host=%s transport=%s transfer=%s",
            self.server,
            self.transport,
            self.transfer_id,
        )
        return conn

    def _live(self) -> http.client.HTTPConnection:
        if self._conn is None or self._aborted:
            raise HostGone(host=self.server, reason="the connection was closed")
        return self._conn

    def use_unix_socket(self, address: str) -> bool:
        """Move to the host's unix socket if the host is this machine and the
        socket serves the ticket; False (staying on TLS) otherwise."""
        if not self._connector.unix_socket or self._unix or not address:
            return False
        if self._conn is None or not _is_local(self._conn.sock):
            return False
        conn = UnixHTTPConnection(address, self._connector.connect_timeout)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(self._connector.timeout)
            conn.request("OPTIONS", self.url.path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise OSError(f"OPTIONS answered {resp.status}")
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            log.info(
                "HOST unix socket not usable, staying on TLS host=%s transfer=%s reason=%s",
                self.server,
                self.transfer_id,
                e,
            )
            return False
        self.close()
        self._conn, self._unix = conn, address
        log.info("HOST using unix socket host=%s transfer=%s", self.url.server, self.transfer_id)
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Stop the request under way now (a canceled ticket); any thread."""
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def errors(self, *, connecting: bool = False, timeout: float | None = None) -> Iterator[None]:
        """Translate what the socket, TLS and http.client raise, once;
        timeout is the one in effect when not the connector's."""
        server = self.server
        try:
            yield
        except HostError:
            raise
        except ssl.SSLCertVerificationError as e:
            raise HostUntrusted(host=server, reason=e.verify_message or str(e)) from None
        except TimeoutError:
            # A host that does not answer: to a connect, or within a request.
            if timeout is None:
                timeout = self._connector.connect_timeout if connecting else self._connector.timeout
            raise HostTimeout(host=server, timeout=timeout) from None
        except http.client.RemoteDisconnected:
            # An OSError too (ConnectionResetError): the status line never came.
            raise HostGone(host=server, reason="closed before replying") from None
        except (ssl.SSLError, OSError) as e:
            reason = _reason(e) if not self._aborted else "the request was canceled"
            if connecting and not self._aborted:
                raise HostUnreachable(host=server, reason=reason) from None
            raise HostGone(host=server, reason=reason) from None
        except http.client.IncompleteRead as e:
            raise HostGone(
                host=server, reason=f"the reply ended after {len(e.partial)} bytes"
            ) from None
        except http.client.HTTPException as e:
            raise HostGone(host=server, reason=f"bad reply: {type(e).__name__}: {e}") from None


def _reason(e: OSError) -> str:
    if isinstance(e, ssl.SSLError):
        return f"TLS failed: {e.reason or e}"
    return e.strerror or str(e) or type(e).__name__


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection became readable: the host closed it (or
    sent what no request asked for, which is as unusable). A reused
    connection has read its replies whole, and with the first one the TLS
    1.3 session tickets that follow a handshake."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _is_local(sock: socket.socket | None) -> bool:
    """Both ends have one address: the host daemon runs on this machine."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return bool(sock.getsockname()[0] == sock.getpeername()[0])
    except OSError:
        return False
