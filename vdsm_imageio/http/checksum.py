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

from .. import checksum, ops
from ..config import Http
from ..pipeline import BufferPool
from ..registry import Registry
from ..tickets import Kind
from .exchange import Exchange

log = logging.getLogger(__name__)


class Checksum:
    def __init__(self, registry: Registry, *, http: Http, pool: BufferPool) -> None:
        self._registry = registry
        self._http = http
        self._pool = pool
        self._algorithms = checksum.algorithms()
        self._zero_digests = checksum.ZeroDigests()

    def algorithms(self, ex: Exchange, ticket_id: str) -> None:
        ex.response.reply_json({"algorithms": self._algorithms})

    def get(self, ex: Exchange, ticket_id: str) -> None:
        query = ex.request.query
        algorithm = checksum.parse_algorithm(query.get("algorithm"), self._algorithms)
        block_size = checksum.parse_block_size(query.get("block_size"))
        ticket = self._registry.authorize(ticket_id, "read")
        handles = ex.link.bind(ticket, Kind.READ)
        size = min(ticket.spec.size, handles.backend.size)
        log.info(
            "CHECKSUM transfer=%s algorithm=%s block_size=%d size=%d",
            ticket.transfer_id,
            algorithm,
            block_size,
            size,
        )
        digest = ticket.run(
            ops.Checksum(
                handles=handles,
                length=size,
                algorithm=algorithm,
                block_size=block_size,
                zero_digest=lambda n: self._zero_digests.get(algorithm, n),
                lanes=self._http.parallel_reads,
                pool=self._pool,
            )
        )
        ex.response.reply_json(
            {"algorithm": algorithm, "block_size": block_size, "checksum": digest}
        )
