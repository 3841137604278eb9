"""Two real daemons on one machine for the proxy tests: a host daemon and a
proxy beside it, and the requests and waits the tests make through them."""

from __future__ import annotations

import contextlib
import http.client
import random
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.proxypair import free_port, stop
from tests.support.daemon import Daemon, ini, new_directory

MiB = 1024**2
WAIT = 10.0
IO_TIMEOUT = 10.0


@contextlib.contextmanager
def host_and_proxy() -> Iterator[tuple[Daemon, Daemon]]:
    """A host daemon and a proxy beside it with the ticket API on TCP."""
    host = Daemon(new_directory())
    try:
        proxy = Daemon(host.dir, ini({"control": {"ticket_port": free_port()}}), proxy=True)
    except BaseException:
        stop(host)
        raise
    try:
        yield host, proxy
    finally:
        try:
            stop(proxy)
        finally:
            stop(host)


def pattern(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def request(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, target, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read()


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


def host_connections(host: Daemon, ticket_id: str) -> int:
    return int(host.status(ticket_id)["connections"])
