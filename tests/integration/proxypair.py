"""A proxy daemon and the host daemon it relays to, and tickets on both.

As the engine does: one ticket id, added on the host daemon for the image
(its url a file) and on the proxy for the host's transfer URL. Also which
connections the proxy holds to the host, seen by the kernel (``ss``), not
by the proxy's own account.
"""

from __future__ import annotations

import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, finish

CMD_TIMEOUT = 30.0


def stop(daemon: Daemon) -> None:
    """Stop a daemon a module fixture started; fail if its life went wrong."""
    problem = finish(daemon)
    if problem is not None:
        pytest.fail(problem)


@dataclass(frozen=True)
class Pair:
    ticket_id: str
    path: Path  # the image, on the host's storage

    @property
    def target(self) -> str:
        return f"/images/{self.ticket_id}"


def add_pair(
    host: Daemon,
    proxy: Daemon,
    *,
    size: int,
    ops: tuple[str, ...] = ("read", "write"),
    data: bytes | None = None,
    host_address: str = "127.0.0.1",
    **extra: Any,
) -> Pair:
    """An image on the host, a ticket for it there, and one on the proxy."""
    ticket_id, path = host.add_ticket(size=size, ops=ops, data=data, **extra)
    add_proxy_ticket(host, proxy, ticket_id, size=size, ops=ops, host_address=host_address)
    return Pair(ticket_id, path)


def proxy_ticket(
    host: Daemon,
    ticket_id: str,
    *,
    size: int,
    ops: tuple[str, ...],
    host_address: str = "127.0.0.1",
) -> dict[str, Any]:
    return {
        "uuid": ticket_id,
        "size": size,
        "ops": list(ops),
        "timeout": 300,
        "url": f"https://{host_address}:{host.port}/images/{ticket_id}",
        "transfer_id": f"proxy-{ticket_id[:8]}",
    }


def add_proxy_ticket(
    host: Daemon,
    proxy: Daemon,
    ticket_id: str,
    *,
    size: int,
    ops: tuple[str, ...],
    host_address: str = "127.0.0.1",
) -> None:
    ticket = proxy_ticket(host, ticket_id, size=size, ops=ops, host_address=host_address)
    proxy.result("Ticket.add", ticket=ticket)


def free_port() -> int:
    """A TCP port free on loopback now (for options that cannot say 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_links(proxy: Daemon, host: Daemon, *, inside: tuple[str, ...] = ()) -> dict[str, int]:
    """Established connections from the proxy's process to the host's, by
    transport: "tls" to its TCP port, "unix" to its unix socket. inside
    runs ss in the proxy's network namespace (ip netns exec NAME)."""
    proxy_pid, host_pid = proxy.proc.pid, host.proc.pid
    links = {"tls": 0, "unix": 0}
    for line in _ss(*inside, "ss", "-tnpH", "state", "established"):
        fields = line.split()
        # Recv-Q Send-Q Local:Port Peer:Port users:(...)
        if _pid_in(line, proxy_pid) and fields[3].rsplit(":", 1)[-1] == str(host.port):
            links["tls"] += 1
    unix = _ss(*inside, "ss", "-xpnH")
    host_unix = {
        inode
        for line in unix
        if _pid_in(line, host_pid)
        and (inode := _unix_inode(line, host.unix_socket.replace("\0", "@"))) is not None
    }
    for line in unix:
        if _pid_in(line, proxy_pid):
            fields = line.split()
            # Netid State Recv-Q Send-Q Local Inode Peer PeerInode users
            if len(fields) >= 8 and fields[7] in host_unix:
                links["unix"] += 1
    return links


def _ss(*argv: str) -> list[str]:
    out = subprocess.run(
        list(argv), capture_output=True, text=True, check=True, timeout=CMD_TIMEOUT
    ).stdout
    return out.splitlines()


def _pid_in(line: str, pid: int) -> bool:
    return re.search(rf"\bpid={pid},", line) is not None


def _unix_inode(line: str, name: str) -> str | None:
    fields = line.split()
    if len(fields) >= 6 and fields[4] == name:
        return fields[5]
    return None
