"""The /images API of one transfer over one connection.

Only what ovirt-imageio 2.x daemons serve too: OPTIONS, GET with one
Range, PUT with Content-Range and ``?flush=n``, PATCH zero and flush,
``GET .../extents`` and ``GET .../checksum``. A status the request did not
want becomes a client error through the one table ``_STATUS_ERRORS``.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import zerocopy
from ..backends import DirtyExtent, ZeroExtent
from ..errors import ImageioError, PeerClosed
from ..zerocopy import Fill
from .errors import (
    ClientError,
    ConnectionLost,
    LocalImageError,
    ProtocolError,
    ServerBusy,
    ServerError,
    StorageFull,
    TicketRefused,
    Unsupported,
)
from .http import Endpoint

log = logging.getLogger(__name__)

# Error bodies are one short line; anything longer is not a message.
MAX_ERROR_BODY = 512
MAX_JSON_BODY = 64 * 1024**2

# Fill buf[:n] with source bytes at offset; returns n (0: the source ended).
ReadAt = Callable[[int, memoryview], int]
# Store all of buf at offset.
WriteAt = Callable[[int, memoryview], None]


@dataclass(frozen=True)
class Options:
    """What OPTIONS said about the ticket."""

    features: frozenset[str]
    writable: bool
    unix_socket: str
    max_readers: int
    max_writers: int


# Statuses whose meaning a person can act on, by their message; other 5xx
# are server failures and any other status is a protocol error.
_STATUS_ERRORS: dict[int, Callable[[str], ClientError]] = {
    403: lambda message: TicketRefused(message=message),
    503: lambda message: ServerBusy(message=message),
    507: lambda message: StorageFull(message=message),
}


class ImageConnection:
    """Requests on one connection, in order; owns the connection."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._path = endpoint.url.path
        self._conn = endpoint.connect()

    def __enter__(self) -> ImageConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> http.client.HTTPConnection:
        return self._conn

    def close(self) -> None:
        self._conn.close()

    def abort(self) -> None:
        """Unblock a request running in another thread; the connection is dead after."""
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(2)
            except OSError:
                pass

    # Metadata.

    def options(self) -> Options:
        resp, body = self._request("OPTIONS", self._path)
        if resp.status in (204, 405):
            # Old daemons: no OPTIONS, or no content. Assume nothing.
            return Options(frozenset(), True, "", 1, 1)
        self._check(resp, body, "describe the transfer")
        doc = self._json(body)
        allow = resp.getheader("Allow")
        writable = allow is None or "PUT" in [m.strip() for m in allow.split(",")]
        return Options(
            features=frozenset(str(f) for f in doc.get("features", [])),
            writable=writable,
            unix_socket=str(doc.get("unix_socket") or ""),
            max_readers=_positive(doc.get("max_readers"), 1),
            max_writers=_positive(doc.get("max_writers"), 1),
        )

    def zero_extents(self) -> list[ZeroExtent]:
        try:
            return [
                ZeroExtent(_int(e["start"]), _int(e["length"]), _bool(e["zero"]), _bool(e["hole"]))
                for e in self._extents("zero")
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise self._bad(f"malformed extent: {e}") from None

    def dirty_extents(self) -> list[DirtyExtent]:
        try:
            return [
                DirtyExtent(
                    _int(e["start"]), _int(e["length"]), _bool(e["dirty"]), _bool(e["zero"])
                )
                for e in self._extents("dirty")
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise self._bad(f"malformed extent: {e}") from None

    def _extents(self, context: str) -> list[Any]:
        resp, body = self._request("GET", f"{self._path}/extents?context={context}")
        if resp.status == 404:
            raise Unsupported(
                what=f"report {context} extents",
                message=_text(body),
                how="the transfer must be started for an incremental backup"
                if context == "dirty"
                else "upgrade the service",
            )
        self._check(resp, body, "report extents")
        doc = self._json(body)
        if not isinstance(doc, list):
            raise self._bad("extents are not a list")
        return doc

    def size_by_range(self) -> int:
        """The image size from a one-byte GET (servers without extents)."""
        resp, body = self._request("GET", self._path, headers={"Range": "bytes=0-0"})
        self._check(resp, body, "read", ok=(206,))
        content_range = resp.getheader("Content-Range") or ""
        _, _, total = content_range.rpartition("/")
        if not total.isdigit():
            raise self._bad(f"no size in Content-Range {content_range!r}")
        return int(total)

    def checksum(self, algorithm: str, block_size: int) -> dict[str, Any]:
        resp, body = self._request(
            "GET", f"{self._path}/checksum?algorithm={algorithm}&block_size={block_size}"
        )
        if resp.status == 404:
            raise Unsupported(
                what="compute checksums",
                message=_text(body),
                how="transfer with --no-verify, or run vdsm-imageio checksum on the host",
            )
        self._check(resp, body, "compute the checksum")
        doc = self._json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("checksum"), str):
            raise self._bad("no checksum in the reply")
        return doc

    # Data.

    def get(self, offset: int, length: int, buf: memoryview, write: WriteAt) -> None:
        """Read [offset, offset+length) into write(), a full buffer at a time."""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        with self._endpoint.errors():
            self._conn.request("GET", self._path, headers=headers)
            resp = self._conn.getresponse()
            if resp.status != 206:
                self._check(resp, resp.read(MAX_ERROR_BODY), "read", ok=(206,))
            if resp.length != length:
                raise self._bad(f"asked {length} bytes, the reply has {resp.length}")
            pos = offset
            end = offset + length
            while pos < end:
                view = buf[: min(len(buf), end - pos)]
                got = 0
                # Whole buffers: a short write to an O_DIRECT target would
                # take the slow unaligned path.
                while got < len(view):
                    n = resp.readinto(view[got:])
                    if n == 0:
                        raise self._lost(f"the reply ended at byte {pos + got} of {end}")
                    got += n
                write(pos, view)
                pos += got

    def put(
        self,
        offset: int,
        length: int,
        buf: memoryview,
        read: ReadAt,
        *,
        progress: Callable[[int], None],
    ) -> None:
        """Send [offset, offset+length) from read(), unflushed."""

        def body() -> None:
            pos, end = offset, offset + length
            while pos < end:
                n = read(pos, buf[: min(len(buf), end - pos)])
                if n == 0:
                    raise _source_ended(pos, end)
                self._conn.send(buf[:n])
                pos += n
                progress(n)

        self._put(offset, length, body)

    @property
    def can_splice(self) -> bool:
        """True when request bodies may be spliced into the connection's
        socket: the daemon's unix socket, where no TLS stands between."""
        return self._endpoint.transport == "unix" and zerocopy.available()

    def put_spliced(
        self, offset: int, length: int, fills: list[Fill], *, progress: Callable[[int], None]
    ) -> None:
        """Like put, the body spliced from fills (``zerocopy.send_from``):
        the data moves from the source's socket to ours in the kernel."""

        def body() -> None:
            sock = self._conn.sock
            assert isinstance(sock, socket.socket)
            try:
                zerocopy.send_from(fills, offset, length, sock, progress)
            except PeerClosed as e:
                # The server stopped taking the body; its reply may say why.
                raise ConnectionResetError(e.fields.get("reason", str(e))) from None
            except BaseException as e:
                # The body stopped short: the server would take whatever
                # this connection sends next for the rest of it.
                self._conn.close()
                if isinstance(e, ImageioError):
                    raise LocalImageError(path="the source", reason=e.message) from None
                raise

        self._put(offset, length, body)

    def _put(self, offset: int, length: int, body: Callable[[], None]) -> None:
        with self._endpoint.errors():
            self._conn.putrequest("PUT", f"{self._path}?flush=n", skip_accept_encoding=True)
            self._conn.putheader("Content-Type", "application/octet-stream")
            self._conn.putheader("Content-Length", str(length))
            self._conn.putheader("Content-Range", f"bytes {offset}-{offset + length - 1}/*")
            self._conn.endheaders()
            try:
                body()
            except OSError:
                # The server may have answered and closed before taking the
                # whole body (507, 403): its reply says why.
                resp = self._reply_after_failed_send()
                if resp is None:
                    raise
                self._check(resp, resp.read(MAX_ERROR_BODY), "write")
                raise
            resp = self._conn.getresponse()
            self._check(resp, resp.read(MAX_ERROR_BODY), "write")

    def zero(self, offset: int, length: int) -> None:
        self._patch({"op": "zero", "offset": offset, "size": length, "flush": False}, "zero")

    def flush(self) -> None:
        self._patch({"op": "flush"}, "flush")

    # Plumbing.

    def _patch(self, msg: dict[str, Any], what: str) -> None:
        body = json.dumps(msg).encode()
        resp, reply = self._request(
            "PATCH", self._path, body=body, headers={"Content-Type": "application/json"}
        )
        self._check(resp, reply, what)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        with self._endpoint.errors():
            self._conn.request(method, path, body=body, headers=headers or {})
            resp = self._conn.getresponse()
            limit = MAX_JSON_BODY if 200 <= resp.status < 300 else MAX_ERROR_BODY
            data = resp.read(limit)
            if not resp.isclosed():
                # More than we accept: the stream is no longer usable.
                self._conn.close()
            return resp, data

    def _reply_after_failed_send(self) -> http.client.HTTPResponse | None:
        try:
            return self._conn.getresponse()
        except (OSError, http.client.HTTPException):
            return None

    def _check(
        self, resp: http.client.HTTPResponse, body: bytes, what: str, ok: tuple[int, ...] = (200,)
    ) -> None:
        if resp.status in ok:
            return
        message = _text(body) or resp.reason
        log.debug("FAILED %s status=%d message=%s", what.upper(), resp.status, message)
        make = _STATUS_ERRORS.get(resp.status)
        if make is not None:
            raise make(message)
        if resp.status >= 500:
            raise ServerError(status=resp.status, message=message)
        raise ProtocolError(
            server=self._endpoint.url.server,
            reason=f"cannot {what}: {resp.status} {message}",
        )

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise self._bad("the reply is not JSON") from None

    def _bad(self, reason: str) -> ProtocolError:
        return ProtocolError(server=self._endpoint.url.server, reason=reason)

    def _lost(self, reason: str) -> ClientError:
        return ConnectionLost(server=self._endpoint.url.server, reason=reason)


def _source_ended(pos: int, end: int) -> ClientError:
    return LocalImageError(path="the source", reason=f"it ended at byte {pos}, expected {end}")


def _text(body: bytes) -> str:
    return body[:MAX_ERROR_BODY].decode("utf-8", errors="replace").strip()


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _positive(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default
