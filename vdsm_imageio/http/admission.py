"""Connection admission: which sockets the data server keeps when crowded.

Rules (DESIGN.md section 10):
- A connection is *unauthenticated* from accept until one of its requests
  is authorized by a live ticket; it is *authorized* from then until it
  closes. Removing the ticket aborts the connections attached to it
  (``Ticket.cancel``), so an authorized connection does not outlive the
  ticket that let it in.
- Unauthenticated connections have a budget of their own and a cap per
  peer group. Admitting one never fails: when the peer's cap is full, that
  peer's oldest unauthenticated connection is evicted; when the budget is
  full, the oldest of all. Evicting the peer's oldest first also frees a
  budget slot, so one admission evicts at most one connection. The oldest
  goes because a socket that has waited longest without proving a ticket is
  the least likely to be a client about to do so, and refusing the newcomer
  would let whoever holds sockets open lock everyone out.
- Authorized connections have ``max_authorized`` slots, which an
  unauthenticated connection never takes: at most ``max_authorized +
  max_unauthenticated`` connections are open at once, and authorized ones
  always have all of their slots. Authorizing past the limit fails and the
  connection stays unauthenticated.
- A trusted listener (one whose peers the operating system authenticated,
  like the ticket API's socket) admits its connections as authorized; past
  the limit they are refused, as nothing else would make room.
- Peers are grouped by address; IPv6 peers by their /64, which one host
  usually owns whole (RFC 4291 section 2.5.1), so a host cannot multiply its
  cap by using more addresses of its own network.

Pure: no sockets, time from an injected clock, no locking (the server's
shell holds one lock around every call).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

PER_PEER = "max_unauthenticated_per_peer"
BUDGET = "max_unauthenticated"


@dataclass(frozen=True)
class Eviction(Generic[K]):
    """An unauthenticated connection to close, and why."""

    conn: K
    peer: str
    reason: str
    limit: int
    age: float


@dataclass(frozen=True)
class _Waiting:
    peer: str
    since: float


class Admission(Generic[K]):
    def __init__(
        self,
        *,
        max_authorized: int,
        max_unauthenticated: int,
        max_per_peer: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(max_authorized, max_unauthenticated, max_per_peer) < 1:
            raise ValueError("every admission limit must be at least 1")
        self._max_authorized = max_authorized
        self._max_unauthenticated = max_unauthenticated
        self._max_per_peer = max_per_peer
        self._clock = clock
        # Insertion order is admission order: the first entry is the oldest.
        self._waiting: dict[K, _Waiting] = {}
        self._by_peer: dict[str, dict[K, None]] = {}
        self._authorized: set[K] = set()

    @property
    def unauthenticated(self) -> int:
        return len(self._waiting)

    @property
    def authorized(self) -> int:
        return len(self._authorized)

    def waiting(self, peer: str) -> int:
        """Unauthenticated connections of a peer group."""
        return len(self._by_peer.get(peer, ()))

    def is_authorized(self, conn: K) -> bool:
        return conn in self._authorized

    def admit(self, conn: K, peer: str) -> Eviction[K] | None:
        """Admit a new unauthenticated connection; return the one to close, if any."""
        self._check_new(conn)
        evicted = None
        mine = self._by_peer.get(peer, {})
        if len(mine) >= self._max_per_peer:
            evicted = self._evict(next(iter(mine)), PER_PEER, self._max_per_peer)
        elif len(self._waiting) >= self._max_unauthenticated:
            evicted = self._evict(next(iter(self._waiting)), BUDGET, self._max_unauthenticated)
        self._waiting[conn] = _Waiting(peer, self._clock())
        self._by_peer.setdefault(peer, {})[conn] = None
        return evicted

    def admit_trusted(self, conn: K) -> bool:
        """Admit a connection of a trusted listener as authorized; False when full."""
        self._check_new(conn)
        if len(self._authorized) >= self._max_authorized:
            return False
        self._authorized.add(conn)
        return True

    def authorize(self, conn: K) -> bool:
        """Move conn to the authorized slots; False if they are full or conn was evicted."""
        if conn in self._authorized:
            return True
        if conn not in self._waiting or len(self._authorized) >= self._max_authorized:
            return False
        self._forget(conn)
        self._authorized.add(conn)
        return True

    def release(self, conn: K) -> None:
        """conn closed; unknown connections (already evicted) are fine."""
        self._authorized.discard(conn)
        if conn in self._waiting:
            self._forget(conn)

    def _check_new(self, conn: K) -> None:
        if conn in self._waiting or conn in self._authorized:
            raise ValueError("connection admitted twice")

    def _evict(self, conn: K, reason: str, limit: int) -> Eviction[K]:
        waiting = self._forget(conn)
        return Eviction(conn, waiting.peer, reason, limit, self._clock() - waiting.since)

    def _forget(self, conn: K) -> _Waiting:
        waiting = self._waiting.pop(conn)
        mine = self._by_peer[waiting.peer]
        del mine[conn]
        if not mine:
            del self._by_peer[waiting.peer]
        return waiting


def peer_group(host: str) -> str:
    """The group a peer address is capped in: the address, an IPv6 /64."""
    if ":" not in host:
        # IPv4 as the kernel formats it, or a name: the group is itself.
        return host
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)
