"""The /images/<ticket> resource: stream, random I/O, zero and flush.

Compatible with ovirt-imageio 2.x clients: OPTIONS advertises features,
the unix socket and the connection limits; GET honours one Range; PUT takes
Content-Length or a chunked body with an optional Content-Range; PATCH does
zero and flush. Every data request runs as an operation of its ticket, so
progress, expiry and cancel apply chunk by chunk.
"""

from __future__ import annotations

import logging
import socket
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from .. import pipeline, zerocopy
from ..backends import (
    Backend,
    LimitedWriters,
    Relayed,
    Spliceable,
    SpliceReader,
    SpliceReaders,
    Streams,
)
from ..errors import (
    BackendError,
    BadRequest,
    ImageEnded,
    LengthRequired,
    RangeNotSatisfiable,
)
from ..registry import Registry
from ..tickets import Operation, Ticket
from ..ticketspec import OPS
from . import cors
from .disposition import content_disposition
from .message import Request, read_json
from .ranges import ByteRange, OpenRange, check_within, parse_content_range, parse_range

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)

READ_FEATURES = ["checksum", "extents"]
WRITE_FEATURES = ["checksum", "extents", "zero", "flush"]
# Smaller downloads are not worth a pipe and a thread.
SPLICE_MIN = 1024**2
# Zero in steps so that cancel and progress apply to huge ranges too.
ZERO_STEP = 1024**3


class Images:
    def __init__(self, registry: Registry, *, unix_socket: str | None, max_json_body: int) -> None:
        self._registry = registry
        self._unix_socket = unix_socket
        self._max_json_body = max_json_body

    # OPTIONS

    def options(self, conn: Connection, req: Request, ticket_id: str) -> None:
        if cors.is_preflight(req):
            # No credentials come with a preflight: the real request that
            # follows is authorized (see vdsm_imageio.http.cors).
            log.debug(
                "PREFLIGHT peer=%s method=%s",
                conn.peer,
                req.header("Access-Control-Request-Method"),
            )
            conn.reply(200)
            return
        options: dict[str, Any] = {}
        if self._unix_socket:
            options["unix_socket"] = self._unix_socket
        if ticket_id == "*":
            allow, options["features"] = "OPTIONS,GET,PUT,PATCH", WRITE_FEATURES
        else:
            ticket = self._registry.authorize(ticket_id, "read")
            conn.bind(ticket, None)
            spec = ticket.spec
            writable = spec.allows("write")
            allow = "OPTIONS,GET,PUT,PATCH" if writable else "OPTIONS,GET"
            features = WRITE_FEATURES if writable else READ_FEATURES
            max_readers = conn.server.config.http.max_readers
            # What a client otherwise learns from a whole extents call: the
            # size extents cover, and what this ticket lets it do.
            size = spec.size
            backend = conn.backend(ticket)
            if isinstance(backend, Relayed):
                # A proxy offers what the host daemon does, at most: its
                # client's requests end there (its unix socket is the host's
                # own, never advertised: a client of the proxy cannot reach it).
                host = backend.host_options()
                features = [f for f in features if f in host.features]
                max_readers = min(max_readers, host.max_readers)
                size = min(size, backend.size)
            options["features"] = features
            options["max_readers"] = max_readers
            options["max_writers"] = self._max_writers(conn, ticket) if writable else 0
            options["size"] = size
            options["ops"] = [op for op in OPS if spec.allows(op)]
            log.info("OPTIONS transfer=%s", ticket.transfer_id)
        conn.reply_json(options, headers={"Allow": allow})

    def _max_writers(self, conn: Connection, ticket: Ticket) -> int:
        """As many writers as are safe on this ticket's storage: every one
        the service allows on files (the sector lock makes partial-sector
        writes safe across connections) and on NBD servers that promise
        multi-conn consistency, one on others."""
        limit = conn.server.config.http.max_writers
        backend = conn.backend(ticket)
        if isinstance(backend, LimitedWriters):
            own = backend.max_writers()
            if own is not None:
                limit = min(limit, own)
        return limit

    # GET

    def get(self, conn: Connection, req: Request, ticket_id: str) -> None:
        close = _flag(req, "close", default=False)
        ticket = self._registry.authorize(ticket_id, "read")
        conn.bind(ticket, "read")
        backend = conn.backend(ticket)
        available = min(ticket.spec.size, backend.size)
        header = req.header("Range")
        if header is not None:
            r = parse_range(header, available)
            status = 206
            headers = {"Content-Range": r.content_range(available)}
        else:
            r, status, headers = ByteRange(0, available), 200, {}
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = content_disposition(ticket.spec.filename)
        if close:
            conn.close_after_reply()
        log.debug("READ size=%d offset=%d transfer=%s", r.length, r.start, ticket.transfer_id)
        # A streaming backend asks its storage for the range before the head
        # goes out, so a refusal there is still this reply's status.
        stream = (
            backend.reading(r.start, r.length) if isinstance(backend, Streams) else nullcontext()
        )
        with ticket.operation(r.start, r.length) as op, stream:
            conn.send_head(status, headers, r.length)
            self._send(conn, ticket, op, r)

    def _send(self, conn: Connection, ticket: Ticket, op: Operation, r: ByteRange) -> None:
        backend = conn.backend(ticket)
        lanes = conn.server.config.http.parallel_reads
        pool = conn.server.pool
        sock = conn.splice_target()
        if sock is not None and r.length >= SPLICE_MIN:
            if isinstance(backend, Spliceable):
                src_fd = backend.splice_source(r.start, r.length)
                if src_fd is not None:
                    zerocopy.send(
                        src_fd,
                        r.start,
                        r.length,
                        sock,
                        lambda n: ticket.progress(op, n),
                        lanes=lanes,
                    )
                    return
            elif isinstance(backend, SpliceReaders) and conn.server.config.http.nbd_splice:
                if self._send_spliced(backend, lanes, ticket, op, r, sock):
                    return

        def send(data: memoryview) -> None:
            conn.sendall(data)
            ticket.progress(op, len(data))

        if lanes > 1 and r.length > 2 * pool.size:
            readers = conn.readers(ticket, lanes)
            if len(readers) > 1 and pipeline.run_lanes(
                pool, [_read_exactly(b, r.end) for b in readers], send, r.start, r.length
            ):
                return
        offset = r.start

        def read(buf: memoryview) -> int:
            nonlocal offset
            want = min(len(buf), r.end - offset)
            if want == 0:
                return 0
            n = backend.readinto(offset, buf[:want])
            if n == 0:
                raise ImageEnded(offset=offset, end=r.end)
            offset += n
            return n

        pipeline.run(pool, read, send, threaded_side="produce", single=r.length <= pool.size)

    def _send_spliced(
        self,
        backend: SpliceReaders,
        lanes: int,
        ticket: Ticket,
        op: Operation,
        r: ByteRange,
        sock: socket.socket,
    ) -> bool:
        """Send through connections of our own to the storage server; False
        (nothing sent) when none could be opened."""
        readers: list[SpliceReader] = []
        try:
            for _ in range(lanes):
                try:
                    reader = backend.open_splice_reader()
                except BackendError as e:
                    log.warning(
                        "SPLICE readers fewer than asked transfer=%s have=%d reason=%s",
                        ticket.transfer_id,
                        len(readers),
                        e,
                    )
                    break
                if reader is None:
                    break
                readers.append(reader)
            if not readers:
                return False
            zerocopy.send_from(
                [rd.fill for rd in readers],
                r.start,
                r.length,
                sock,
                lambda n: ticket.progress(op, n),
            )
            return True
        finally:
            for reader in readers:
                reader.close()

    # PUT

    def put(self, conn: Connection, req: Request, ticket_id: str) -> None:
        flush = _flag(req, "flush", default=True)
        close = _flag(req, "close", default=False)
        ticket = self._registry.authorize(ticket_id, "write")
        conn.bind(ticket, "write")
        if close:
            conn.close_after_reply()
        start, length = _put_range(req)
        size = ticket.spec.size
        check_within(start, length or 0, size)
        log.debug(
            "WRITE size=%s offset=%d flush=%s transfer=%s", length, start, flush, ticket.transfer_id
        )
        backend = conn.backend(ticket)
        # A streaming backend takes the whole body as one write to its
        # storage, flushed there if the client asked.
        stream: AbstractContextManager[None] = nullcontext()
        streamed = False
        if isinstance(backend, Streams) and length is not None:
            stream, streamed = backend.writing(start, length, flush=flush), True
        with ticket.operation(start, length if length is not None else size - start) as op:
            with stream:
                written = self._receive(conn, ticket, op, start, length)
                if length is not None and written != length:
                    raise BadRequest(
                        field="body", reason=f"got {written} bytes, Content-Range says {length}"
                    )
            if flush and not streamed:
                backend.flush()
        conn.reply(200)

    def _receive(
        self, conn: Connection, ticket: Ticket, op: Operation, start: int, length: int | None
    ) -> int:
        """Write the body at start, never past its range or the ticket."""
        body = conn.body
        assert body is not None
        backend = conn.backend(ticket)
        size = ticket.spec.size
        end = size if length is None else start + length
        received = start
        written = start

        def recv(buf: memoryview) -> int:
            nonlocal received
            if body.done:
                return 0
            # One byte more than allowed tells a long body from an exact one.
            n = body.readinto(buf[: min(len(buf), end - received + 1)])
            if received + n > end:
                # Only a chunked body can get here: its length was not known.
                if length is None:
                    raise RangeNotSatisfiable(size=size)
                raise BadRequest(
                    field="body", reason=f"longer than the {length} bytes of Content-Range"
                )
            received += n
            return n

        def write(data: memoryview) -> None:
            nonlocal written
            backend.write(written, data)
            written += len(data)
            ticket.progress(op, len(data))

        small = length is not None and length <= conn.server.pool.size
        pipeline.run(conn.server.pool, recv, write, threaded_side="consume", single=small)
        return written - start

    # PATCH

    def patch(self, conn: Connection, req: Request, ticket_id: str) -> None:
        ticket = self._registry.authorize(ticket_id, "write")
        conn.bind(ticket, "write")
        msg = self._json_body(conn, req)
        op = msg.get("op")
        if op == "zero":
            self._zero(conn, ticket, msg)
        elif op == "flush":
            log.info("FLUSH transfer=%s", ticket.transfer_id)
            with ticket.operation(0, 0):
                conn.backend(ticket).flush()
        else:
            raise BadRequest(field="op", reason=f"expected 'zero' or 'flush', got {op!r}")
        conn.reply(200)

    def _json_body(self, conn: Connection, req: Request) -> dict[str, Any]:
        assert conn.body is not None
        return read_json(req, conn.body, self._max_json_body)

    def _zero(self, conn: Connection, ticket: Ticket, msg: dict[str, Any]) -> None:
        size = _json_int(msg, "size", None)
        offset = _json_int(msg, "offset", 0)
        flush = msg.get("flush", False)
        if not isinstance(flush, bool):
            raise BadRequest(field="flush", reason=f"expected true or false, got {flush!r}")
        check_within(offset, size, ticket.spec.size)
        log.debug(
            "ZERO size=%d offset=%d flush=%s transfer=%s", size, offset, flush, ticket.transfer_id
        )
        backend = conn.backend(ticket)
        with ticket.operation(offset, size) as op:
            end = offset + size
            while offset < end:
                step = min(ZERO_STEP, end - offset)
                backend.zero(offset, step, punch_hole=ticket.spec.sparse)
                offset += step
                ticket.progress(op, step)
            if flush:
                backend.flush()


def _put_range(req: Request) -> tuple[int, int | None]:
    """Start and length of a PUT (length None: a chunked body without range
    or with an open one)."""
    header = req.header("Content-Range")
    if not req.chunked and req.content_length is None:
        raise LengthRequired()
    if header is None:
        return 0, req.content_length
    r, total = parse_content_range(header)
    if isinstance(r, OpenRange):
        length = req.content_length
        if total is not None and length is not None and r.start + length > total:
            raise BadRequest(field="Content-Range", reason="body ends past the complete length")
        return r.start, length
    if req.content_length is not None and req.content_length != r.length:
        raise BadRequest(
            field="Content-Range",
            reason=f"range of {r.length} bytes but Content-Length is {req.content_length}",
        )
    return r.start, r.length


def _read_exactly(backend: Backend, end: int) -> pipeline.ReadAt:
    def read(offset: int, buf: memoryview) -> None:
        n = backend.readinto(offset, buf)
        if n != len(buf):
            raise ImageEnded(offset=offset + n, end=end)

    return read


def _flag(req: Request, name: str, *, default: bool) -> bool:
    value = req.query.get(name)
    if value is None:
        return default
    if value not in ("y", "n"):
        raise BadRequest(
            field=f"query parameter {name!r}", reason=f"expected 'y' or 'n', got {value!r}"
        )
    return value == "y"


def _json_int(msg: dict[str, Any], name: str, default: int | None) -> int:
    value = msg.get(name, default)
    if value is None:
        raise BadRequest(field=name, reason="is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(field=name, reason=f"expected an integer >= 0, got {value!r}")
    return value
