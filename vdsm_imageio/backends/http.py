"""The http backend: a proxy ticket's image, served by the daemon that holds it.

A ticket whose url is ``https://host:port/images/<ticket>`` names an image
on another daemon (ours or ovirt-imageio 2.x, on the hypervisor host that
reaches the storage). The backend speaks that daemon's ``/images`` API
over one keep-alive connection per client connection (``hostconn``),
opened on first use; its OPTIONS, asked once, tells the image's size, the
features and limits the proxy may offer, and the unix socket to use when
the host is this machine.

Theory of operation: a client request becomes one request to the host.
Told the range first (``reading``, ``writing``: the ``Streams``
protocol), a download is one ranged GET whose body the host streams
straight into the caller's buffers, and an upload one PUT whose body the
caller's buffers fill as they arrive, with the client's ``flush`` passed
through; nothing holds a whole request. Without that (random I/O through
``readinto`` and ``write``), each call is one GET or PUT of the buffer.
Zero and flush are PATCH requests, extents and checksums the host's own
answers: the data never crosses the network for them.

Rules:
- A stream is consumed whole or abandoned: an abandoned reply or body
  leaves the connection out of step, so it is closed, and the next request
  opens another.
- The host's refusals keep their status for the client (``hostapi``);
  ``abort`` (a canceled ticket) stops a request blocked on the host at once.
- Nothing logs the URL's path: it is the host's ticket id, the secret.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import urlencode

from .. import directio
from ..errors import BackendError, HostError, StorageReadOnly, UnsupportedContext
from . import DirtyExtent, HostOptions, ZeroExtent, hostapi
from .hostconn import Connector, HostConnection, parse_url

log = logging.getLogger(__name__)

# Bodies read whole: OPTIONS, errors, checksums and extents (a fragmented
# image's extents run to a few MiB); more than this is not a reply of ours.
MAX_REPLY = 64 * 1024**2
MAX_ERROR = 64 * 1024
CONTEXTS = ("zero", "dirty")
# Bytes a second that a host daemon hashes at least (a slow disk).
CHECKSUM_RATE = 32 * 1024**2


def open_http(url: str, *, mode: str, connector: Connector, transfer_id: str) -> HttpBackend:
    """A backend for the image at url; it connects on first use."""
    if mode not in ("r", "rw"):
        raise ValueError(f"mode must be 'r' or 'rw', not {mode!r}")
    try:
        host_url = parse_url(url)
    except ValueError as e:
        raise BackendError(reason=str(e)) from None
    conn = HostConnection(connector, host_url, transfer_id=transfer_id)
    log.info("OPEN host=%s mode=%s transfer=%s", host_url.server, mode, transfer_id)
    return HttpBackend(conn, writable=mode == "rw")


class _Stream:
    """The range of an exchange under way and how far it got."""

    def __init__(self, start: int, end: int, resp: http.client.HTTPResponse | None) -> None:
        self.pos = start
        self.end = end
        self.resp = resp


class HttpBackend:
    """An image on a host daemon; owned by one connection."""

    def __init__(self, conn: HostConnection, *, writable: bool) -> None:
        self._conn = conn
        self._path = conn.url.path
        self._writable = writable
        self._options: HostOptions | None = None
        self._size: int | None = None
        self._read: _Stream | None = None
        self._write: _Stream | None = None
        self._closed = False

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # What the host advertises.

    def host_options(self) -> HostOptions:
        if self._options is None:
            resp = self._conn.request("OPTIONS", self._path)
            body = self._body(resp, MAX_ERROR)
            self._options = hostapi.parse_options(self._conn.server, resp.status, body)
            if self._options.unix_socket:
                self._conn.use_unix_socket(self._options.unix_socket)
        return self._options

    @property
    def size(self) -> int:
        if self._size is None:
            size = self.host_options().size
            self._size = size if size is not None else self._probe_size()
        return self._size

    def _probe_size(self) -> int:
        # A daemon that does not advertise the size tells it in the
        # Content-Range of any partial reply (RFC 9110 section 14.4).
        resp = self._request("GET", self._path, headers={"Range": "bytes=0-0"})
        body = self._body(resp, MAX_ERROR)
        header = resp.getheader("Content-Range", "")
        if resp.status == 416 and header.startswith("bytes */"):
            # An empty image: nothing to give, but its size.
            header = "bytes 0-0/" + header.removeprefix("bytes */")
        elif resp.status != 206:
            raise hostapi.error_for(self._conn.server, resp.status, body)
        _, _, size = hostapi.content_range(self._conn.server, header)
        if size is None:
            raise HostError(host=self._conn.server, reason="bad GET reply: no image size")
        return size

    @property
    def block_size(self) -> int:
        return 1

    def buffer(self, size: int) -> memoryview:
        return directio.aligned_buffer(size)

    # Reads.

    def readinto(self, offset: int, buf: memoryview) -> int:
        stream = self._read
        if stream is not None and offset == stream.pos and stream.pos < stream.end:
            return self._stream_into(stream, buf)
        self._abandon()
        length = min(len(buf), max(0, self.size - offset))
        if length == 0:
            return 0
        stream = self._get(offset, length)
        n = 0
        while n < length:
            n += self._stream_into(stream, buf[n:length])
        return length

    @contextlib.contextmanager
    def reading(self, start: int, length: int) -> Iterator[None]:
        self._abandon()
        length = min(length, max(0, self.size - start))
        if length == 0:
            yield
            return
        self._read = self._get(start, length)
        try:
            yield
        except BaseException:
            self._abandon()
            raise
        finally:
            if self._read is not None and self._read.pos < self._read.end:
                self._abandon()
            self._read = None

    def _get(self, start: int, length: int) -> _Stream:
        resp = self._request(
            "GET", self._path, headers={"Range": hostapi.range_header(start, length)}
        )
        if resp.status != 206:
            raise self._error(resp)
        first, end, _ = hostapi.content_range(self._conn.server, resp.getheader("Content-Range"))
        if (first, end) != (start, start + length) or resp.length != length:
            self._conn.close()
            raise HostError(
                host=self._conn.server,
                reason=f"bad GET reply: asked for {length} bytes at {start}, "
                f"got {end - first} at {first}",
            )
        return _Stream(start, start + length, resp)

    def _stream_into(self, stream: _Stream, buf: memoryview) -> int:
        assert stream.resp is not None
        want = min(len(buf), stream.end - stream.pos)
        with self._conn.errors():
            n = stream.resp.readinto(buf[:want])
        if n == 0:
            self._conn.close()
            raise HostError(
                host=self._conn.server,
                reason=f"the reply ended at offset {stream.pos}, before {stream.end}",
            )
        stream.pos += n
        return n

    # Writes.

    def write(self, offset: int, buf: memoryview) -> int:
        self._check_writable("write")
        stream = self._write
        if stream is not None and offset == stream.pos and offset + len(buf) <= stream.end:
            self._stream_from(stream, buf)
            return len(buf)
        self._abandon()
        if len(buf) == 0:
            return 0
        resp = self._request(
            "PUT", self._path + "?flush=n", body=buf, headers=_put_headers(offset, len(buf))
        )
        self._done(resp)
        return len(buf)

    @contextlib.contextmanager
    def writing(self, start: int, length: int, *, flush: bool) -> Iterator[None]:
        self._check_writable("write")
        self._abandon()
        if length == 0:
            yield
            if flush:
                self.flush()
            return
        target = self._path + ("?flush=y" if flush else "?flush=n")
        self._connected()
        self._conn.begin("PUT", target, _put_headers(start, length))
        stream = self._write = _Stream(start, start + length, None)
        try:
            yield
            if stream.pos != stream.end:
                raise BackendError(
                    reason=f"upload stopped at offset {stream.pos}, before {stream.end}"
                )
            self._done(self._conn.response())
        except BaseException:
            self._conn.close()
            raise
        finally:
            self._write = None

    def _stream_from(self, stream: _Stream, buf: memoryview) -> None:
        try:
            self._conn.send(buf)
        except HostError as e:
            # The host may have refused before the body ended, and closed:
            # its answer, if it arrived, says why.
            raise self._early_reply() or e from None
        stream.pos += len(buf)

    def _early_reply(self) -> HostError | None:
        try:
            resp = self._conn.response()
            error = self._error(resp) if resp.status != 200 else None
        except HostError:
            error = None
        self._conn.close()
        return error

    def zero(self, offset: int, length: int, *, punch_hole: bool) -> None:
        # The host's ticket decides whether zeroing punches holes (its
        # sparse); the request cannot say, as in ovirt-imageio's API.
        self._check_writable("zero")
        self._abandon()
        if length:
            self._patch({"op": "zero", "offset": offset, "size": length, "flush": False})

    def flush(self) -> None:
        self._abandon()
        if self._writable:
            self._patch({"op": "flush"})

    def _patch(self, msg: dict[str, object]) -> None:
        body = json.dumps(msg).encode()
        resp = self._request(
            "PATCH", self._path, body=body, headers={"Content-Type": "application/json"}
        )
        self._done(resp)

    def _check_writable(self, op: str) -> None:
        if not self._writable:
            raise StorageReadOnly(op=op)

    # What the host computes.

    def extents(self, context: str, start: int, length: int) -> Iterator[ZeroExtent | DirtyExtent]:
        if context not in CONTEXTS:
            raise UnsupportedContext(context=context, reason="unknown context")
        self._abandon()
        end = min(start + length, self.size)
        if start >= end:
            return iter(())
        if "extents" not in self.host_options().features:
            if context == "dirty":
                raise UnsupportedContext(context=context, reason="the host reports no extents")
            return iter([ZeroExtent(start, end - start, zero=False, hole=False)])
        server = self._conn.server
        return iter(
            hostapi.paged(server, lambda a, b: self._extents_page(context, a, b), start, end)
        )

    def _extents_page(self, context: str, start: int, end: int) -> list[ZeroExtent | DirtyExtent]:
        query = urlencode({"context": context, "start": start, "length": end - start})
        resp = self._request("GET", f"{self._path}/extents?{query}")
        body = self._body(resp, MAX_REPLY)
        if resp.status != 200:
            raise hostapi.extents_error(self._conn.server, context, resp.status, body)
        return list(hostapi.parse_extents(self._conn.server, context, body))

    def checksum(self, algorithm: str, block_size: int) -> str:
        self._abandon()
        log.info(
            "CHECKSUM relayed=yes host=%s algorithm=%s block_size=%d transfer=%s",
            self._conn.server,
            algorithm,
            block_size,
            self._conn.transfer_id,
        )
        query = urlencode({"algorithm": algorithm, "block_size": block_size})
        # The host answers once it has read the whole image: wait for a host
        # hashing CHECKSUM_RATE at least, on top of the usual timeout. A
        # canceled ticket stops the wait at once (abort).
        wait = self._conn.timeout + self.size / CHECKSUM_RATE
        resp = self._request("GET", f"{self._path}/checksum?{query}", timeout=wait)
        body = self._body(resp, MAX_ERROR)
        if resp.status != 200:
            raise hostapi.error_for(self._conn.server, resp.status, body)
        return hostapi.parse_checksum(
            self._conn.server, body, algorithm=algorithm, block_size=block_size
        )

    # The connection.

    def abort(self) -> None:
        self._conn.abort()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._read = self._write = None
            self._conn.close()

    def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        self._connected()
        return self._conn.request(method, target, body=body, headers=headers, timeout=timeout)

    def _connected(self) -> None:
        """The first request of the backend asks OPTIONS first: it chooses
        the transport (the unix socket of a host on this machine)."""
        if self._closed:
            raise ValueError("I/O on a closed backend")
        if self._options is None:
            self.host_options()

    def _abandon(self) -> None:
        """Give up a stream that was not consumed whole: close its connection."""
        stream = self._read or self._write
        self._read = self._write = None
        if stream is not None and stream.pos < stream.end:
            self._conn.close()

    def _body(self, resp: http.client.HTTPResponse, limit: int) -> bytes:
        with self._conn.errors():
            body = resp.read(limit + 1)
        if len(body) > limit:
            self._conn.close()
            raise HostError(host=self._conn.server, reason=f"a reply over {limit} bytes")
        if not resp.isclosed():
            # Content-Length promised more than arrived; http.client reads
            # to the end of such a reply only when asked for all of it.
            self._conn.close()
        return body

    def _done(self, resp: http.client.HTTPResponse) -> None:
        if resp.status != 200:
            raise self._error(resp)
        self._body(resp, MAX_ERROR)

    def _error(self, resp: http.client.HTTPResponse) -> HostError:
        body = self._body(resp, MAX_ERROR)
        size = self._size if self._size is not None else _size_of(resp)
        return hostapi.error_for(self._conn.server, resp.status, body, size=size)


def _put_headers(start: int, length: int) -> dict[str, str]:
    return {
        "Content-Length": str(length),
        "Content-Range": f"bytes {start}-{start + length - 1}/*",
        "Content-Type": "application/octet-stream",
    }


def _size_of(resp: http.client.HTTPResponse) -> int | None:
    """The size a 416 reply names (Content-Range: bytes */size)."""
    header = resp.getheader("Content-Range", "")
    value = header.removeprefix("bytes */")
    return int(value) if header.startswith("bytes */") and value.isdigit() else None
