"""The /images/<ticket> resource: stream, random I/O, zero and flush.

Compatible with ovirt-imageio 2.x clients: OPTIONS advertises features,
the unix socket and the connection limits; GET honours one Range; PUT takes
Content-Length or a chunked body with an optional Content-Range; PATCH does
zero and flush. A handler parses the request, authorizes it by its ticket
and runs the operation (``vdsm_imageio.ops``, which also chooses how a
download moves) as a request of the ticket, so progress, expiry and cancel
apply chunk by chunk.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import ops
from ..config import Http
from ..errors import BadRequest, LengthRequired
from ..pipeline import BufferPool
from ..registry import Registry
from ..tickets import Kind
from ..ticketspec import OPS
from . import cors
from .disposition import content_disposition
from .exchange import Exchange
from .message import Request, read_json
from .ranges import ByteRange, OpenRange, check_within, parse_content_range, parse_range

log = logging.getLogger(__name__)

READ_FEATURES = ["checksum", "extents"]
WRITE_FEATURES = ["checksum", "extents", "zero", "flush"]


class Images:
    def __init__(
        self, registry: Registry, *, http: Http, pool: BufferPool, unix_socket: str | None
    ) -> None:
        self._registry = registry
        self._http = http
        self._pool = pool
        self._unix_socket = unix_socket

    def capabilities(self, ex: Exchange) -> ops.Capabilities:
        target = ex.link.splice_target
        return ops.Capabilities(
            splice=target,
            lanes=self._http.parallel_reads,
            nbd_splice=self._http.nbd_splice,
            pool=self._pool,
            splicer=ex.link.splicer if target is not None else None,
        )

    # OPTIONS

    def options(self, ex: Exchange, ticket_id: str) -> None:
        req = ex.request
        if cors.is_preflight(req):
            # No credentials come with a preflight: the real request that
            # follows is authorized (see vdsm_imageio.http.cors).
            log.debug(
                "PREFLIGHT peer=%s method=%s",
                ex.link.peer,
                req.header("Access-Control-Request-Method"),
            )
            ex.response.reply(200)
            return
        options: dict[str, Any] = {}
        if self._unix_socket:
            options["unix_socket"] = self._unix_socket
        if ticket_id == "*":
            allow, options["features"] = "OPTIONS,GET,PUT,PATCH", WRITE_FEATURES
        else:
            ticket = self._registry.authorize(ticket_id, "read")
            handles = ex.link.bind(ticket, Kind.PEEK)
            spec = ticket.spec
            writable = spec.allows("write")
            allow = "OPTIONS,GET,PUT,PATCH" if writable else "OPTIONS,GET"
            offer = ops.offer(
                handles.backend,
                features=WRITE_FEATURES if writable else READ_FEATURES,
                readers=self._http.max_readers,
                writers=self._http.max_writers if writable else 0,
                # What a client otherwise learns from a whole extents call:
                # the size extents cover.
                size=spec.size,
            )
            options["features"] = offer.features
            options["max_readers"] = offer.max_readers
            options["max_writers"] = offer.max_writers
            options["size"] = offer.size
            # And what this ticket lets it do.
            options["ops"] = [op for op in OPS if spec.allows(op)]
            log.info("OPTIONS transfer=%s", ticket.transfer_id)
        ex.response.reply_json(options, headers={"Allow": allow})

    # GET

    def get(self, ex: Exchange, ticket_id: str) -> None:
        req, response = ex.request, ex.response
        close = _flag(req, "close", default=False)
        ticket = self._registry.authorize(ticket_id, "read")
        handles = ex.link.bind(ticket, Kind.READ)
        available = min(ticket.spec.size, handles.backend.size)
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
            response.close_after()
        log.debug("READ size=%d offset=%d transfer=%s", r.length, r.start, ticket.transfer_id)
        download = ops.Download(
            handles,
            r.start,
            r.length,
            self.capabilities(ex),
            begin=lambda: response.send_head(status, headers, r.length),
            send=response.write,
        )
        ticket.run(download)

    # PUT

    def put(self, ex: Exchange, ticket_id: str) -> None:
        req = ex.request
        flush = _flag(req, "flush", default=True)
        close = _flag(req, "close", default=False)
        ticket = self._registry.authorize(ticket_id, "write")
        handles = ex.link.bind(ticket, Kind.WRITE)
        if close:
            ex.response.close_after()
        start, length = _put_range(req)
        size = ticket.spec.size
        check_within(start, length or 0, size)
        log.debug(
            "WRITE size=%s offset=%d flush=%s transfer=%s", length, start, flush, ticket.transfer_id
        )
        upload = ops.Upload(
            backend=handles.backend,
            body=ex.body,
            start=start,
            declared=length,
            size=size,
            flush=flush,
            pool=self._pool,
        )
        ticket.run(upload)
        ex.response.reply(200)

    # PATCH

    def patch(self, ex: Exchange, ticket_id: str) -> None:
        ticket = self._registry.authorize(ticket_id, "write")
        handles = ex.link.bind(ticket, Kind.WRITE)
        msg = read_json(ex.request, ex.body, self._http.max_json_body)
        op = msg.get("op")
        if op == "zero":
            size = _json_int(msg, "size", None)
            offset = _json_int(msg, "offset", 0)
            flush = msg.get("flush", False)
            if not isinstance(flush, bool):
                raise BadRequest(field="flush", reason=f"expected true or false, got {flush!r}")
            check_within(offset, size, ticket.spec.size)
            log.debug(
                "ZERO size=%d offset=%d flush=%s transfer=%s",
                size,
                offset,
                flush,
                ticket.transfer_id,
            )
            backend = handles.backend
            punch = ticket.spec.sparse
            zero = ops.Zero(
                backend=backend, start=offset, length=size, punch_hole=punch, flush=flush
            )
            ticket.run(zero)
        elif op == "flush":
            log.info("FLUSH transfer=%s", ticket.transfer_id)
            ticket.run(ops.Flush(handles.backend))
        else:
            raise BadRequest(field="op", reason=f"expected 'zero' or 'flush', got {op!r}")
        ex.response.reply(200)


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
