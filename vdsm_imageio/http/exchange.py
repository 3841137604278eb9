"""One request and its response: what a handler is given.

A handler reads the request and its body, writes the response, and asks
the connection the request came on (``Link``) for what only the connection
has: a place on the ticket that authorized the request, and the storage
opened for it. The exchange lives for one request; the connection makes a
new one for the next.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Protocol

from ..backends.handles import Handles
from ..tickets import Kind, Ticket
from ..zerocopy import Splicer
from .message import Body, Request
from .response import Response


class Link(Protocol):
    """What a handler may ask of its connection (``http.connection``)."""

    @property
    def peer(self) -> str:
        """How logs name the client."""

    @property
    def splice_target(self) -> socket.socket | None:
        """The client's socket when image data may be spliced into it (not TLS)."""

    @property
    def splicer(self) -> Splicer:
        """The connection's pipes and helper threads for spliced downloads."""

    def bind(self, ticket: Ticket, kind: Kind) -> Handles:
        """Use ticket, which authorized this request, on the connection;
        the handles on its storage, opened when first used."""


@dataclass(frozen=True)
class Exchange:
    request: Request
    body: Body
    response: Response
    link: Link
