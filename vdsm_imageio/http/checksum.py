"""The /images/<ticket>/checksum resources: what the host has, in one digest.

``GET /images/<ticket>/checksum[?algorithm=&block_size=]`` answers
``{"algorithm", "block_size", "checksum"}`` computed as ovirt-imageio's
client computes it locally (``vdsm_imageio.checksum``), so a client
verifies a transfer without moving the image again. It needs a read
ticket, runs as an operation of the ticket (progress, expiry and cancel
apply) and covers the bytes a GET of the whole image returns, rounded up
to whole sectors as qemu sees them.
``GET /images/<ticket>/checksum/algorithms`` lists the algorithms; it
describes the server, so it needs no ticket.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import checksum, checksum_io
from ..backends import Backend, DirtyExtent, Relayed, ZeroExtent
from ..errors import ImageEnded, UnsupportedContext
from ..registry import Registry
from ..tickets import Ticket
from .message import Request

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


class Checksum:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._algorithms = checksum.algorithms()
        self._zero_digests = checksum.ZeroDigests()

    def algorithms(self, conn: Connection, req: Request, ticket_id: str) -> None:
        conn.reply_json({"algorithms": self._algorithms})

    def get(self, conn: Connection, req: Request, ticket_id: str) -> None:
        algorithm = checksum.parse_algorithm(req.query.get("algorithm"), self._algorithms)
        block_size = checksum.parse_block_size(req.query.get("block_size"))
        ticket = self._registry.authorize(ticket_id, "read")
        conn.bind(ticket, "read")
        backend = conn.backend(ticket)
        size = min(ticket.spec.size, backend.size)
        if isinstance(backend, Relayed):
            self._relay(conn, ticket, backend, algorithm, block_size, size)
            return
        lanes = conn.server.config.http.parallel_reads
        log.info(
            "CHECKSUM transfer=%s algorithm=%s block_size=%d size=%d",
            ticket.transfer_id,
            algorithm,
            block_size,
            size,
        )
        with ticket.operation(0, size) as op:
            blocks = checksum.plan(
                _zero_extents(backend, size), size, block_size, checksum.BLOCK_ALIGNMENT
            )
            readers = conn.readers(ticket, lanes)
            if checksum.BLOCK_ALIGNMENT % backend.block_size:
                # Shared readers rely on aligned reads (checksum_io's rules).
                lanes = len(readers)
            digest = checksum_io.compute(
                blocks,
                new=checksum.hash_factory(algorithm),
                zero_digest=lambda n: self._zero_digests.get(algorithm, n),
                readers=[_read_exactly(r, size) for r in readers],
                pool=conn.server.pool,
                lanes=lanes,
                # The sector padding is not image data: transferred stays <= size.
                progress=lambda n: ticket.progress(op, min(n, size - op.done)),
            )
        conn.reply_json({"algorithm": algorithm, "block_size": block_size, "checksum": digest})

    def _relay(
        self,
        conn: Connection,
        ticket: Ticket,
        backend: Relayed,
        algorithm: str,
        block_size: int,
        size: int,
    ) -> None:
        """A proxy ticket's checksum is the host daemon's: it reads the image
        where it is, and the data never crosses the network."""
        log.info(
            "CHECKSUM transfer=%s algorithm=%s block_size=%d size=%d relayed=yes",
            ticket.transfer_id,
            algorithm,
            block_size,
            size,
        )
        with ticket.operation(0, size) as op:
            result = backend.checksum(algorithm, block_size)
            # Hashed on the host, as a local checksum counts what it read.
            ticket.progress(op, size)
        conn.reply_json(result)


def _zero_extents(backend: Backend, size: int) -> list[ZeroExtent | DirtyExtent]:
    try:
        return list(backend.extents("zero", 0, size))
    except UnsupportedContext:
        # No zero extents: everything is read, and the digest is the same.
        return []


def _read_exactly(backend: Backend, end: int) -> checksum_io.ReadAt:
    def read(offset: int, buf: memoryview) -> None:
        n = backend.readinto(offset, buf)
        if n != len(buf):
            raise ImageEnded(offset=offset + n, end=end)

    return read
