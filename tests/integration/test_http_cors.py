"""CORS for browser uploads, with raw requests on a real daemon.

Each test is one rule of vdsm_imageio.http.cors: what a browser needs to
see so that a page on another origin can upload and read every answer,
errors included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from tests.integration.rawhttp import send

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2
ORIGIN = "http://127.0.0.1:8080"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "PUT",
    "Access-Control-Request-Headers": "cache-control,content-range,pragma",
}
EXPOSED = {"content-range", "content-length", "allow", "range"}


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def expired_ticket(daemon: Daemon) -> str:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    daemon.result("Ticket.extend", uuid=ticket_id, timeout=0)
    return ticket_id


def exposed(value: str | None) -> set[str]:
    return {h.strip().lower() for h in (value or "").split(",")}


@pytest.mark.parametrize("ticket", ["expired", "unknown", "live"])
def test_preflight_is_200_without_authorizing_the_ticket(daemon: Daemon, ticket: str) -> None:
    if ticket == "expired":
        ticket_id = expired_ticket(daemon)
    elif ticket == "unknown":
        ticket_id = "no-such-ticket"
    else:
        ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_tls()
    try:
        resp, body = send(sock, "OPTIONS", f"/images/{ticket_id}", PREFLIGHT)
    finally:
        sock.close()
    assert resp.status == 200
    assert body == b""
    assert resp.getheader("Access-Control-Allow-Origin") == "*"
    methods = {m.strip() for m in resp.getheader("Access-Control-Allow-Methods", "").split(",")}
    assert {"PUT", "GET", "PATCH", "OPTIONS"} <= methods
    assert resp.getheader("Access-Control-Allow-Headers") == "*"
    assert int(resp.getheader("Access-Control-Max-Age", "0")) > 0


def test_preflight_neither_attaches_nor_counts_as_activity(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    wait_for(lambda: daemon.status(ticket_id)["idle_time"] >= 1)
    sock = daemon.raw_tls()
    try:
        resp, _ = send(sock, "OPTIONS", f"/images/{ticket_id}", PREFLIGHT)
        assert resp.status == 200
        # The connection is still open: an attached one would be counted.
        status = daemon.status(ticket_id)
    finally:
        sock.close()
    assert status["connections"] == 0
    # Activity would have reset idle_time to 0 (and moved expiry).
    assert status["idle_time"] >= 1


def test_options_with_origin_but_no_request_method_is_authorized(daemon: Daemon) -> None:
    # A page's own OPTIONS (after its preflight) is a real request.
    ticket_id = expired_ticket(daemon)
    sock = daemon.raw_tls()
    try:
        resp, body = send(sock, "OPTIONS", f"/images/{ticket_id}", {"Origin": ORIGIN})
    finally:
        sock.close()
    assert resp.status == 403
    assert b"expired" in body
    assert resp.getheader("Access-Control-Allow-Origin") == "*"


def test_forbidden_put_carries_cors_headers_and_its_reason(daemon: Daemon) -> None:
    ticket_id = expired_ticket(daemon)
    sock = daemon.raw_tls()
    try:
        resp, body = send(
            sock,
            "PUT",
            f"/images/{ticket_id}?flush=n",
            {
                "Origin": ORIGIN,
                "Content-Range": "bytes 0-4/1048576",
                "Content-Length": "5",
                "Cache-Control": "no-cache",
            },
            b"hello",
        )
    finally:
        sock.close()
    assert resp.status == 403
    assert b"has expired" in body
    assert resp.getheader("Access-Control-Allow-Origin") == "*"
    assert EXPOSED <= exposed(resp.getheader("Access-Control-Expose-Headers"))
    assert int(resp.getheader("Access-Control-Max-Age", "0")) > 0


def test_every_response_with_origin_has_max_age_and_exposes_headers(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB, data=b"hello")
    sock = daemon.raw_tls()
    try:
        got, data = send(
            sock, "GET", f"/images/{ticket_id}", {"Origin": ORIGIN, "Range": "bytes=0-4"}
        )
        put, _ = send(
            sock,
            "PUT",
            f"/images/{ticket_id}?flush=n",
            {"Origin": ORIGIN, "Content-Range": "bytes 5-6/1048576", "Content-Length": "2"},
            b"!!",
        )
        missing, _ = send(sock, "GET", "/nothing", {"Origin": ORIGIN})
    finally:
        sock.close()
    assert (got.status, data) == (206, b"hello")
    assert (put.status, missing.status) == (200, 404)
    for resp in (got, put, missing):
        assert resp.getheader("Access-Control-Allow-Origin") == "*"
        assert EXPOSED <= exposed(resp.getheader("Access-Control-Expose-Headers"))
        assert int(resp.getheader("Access-Control-Max-Age", "0")) > 0
        # Only a preflight is told which methods and headers are allowed.
        assert resp.getheader("Access-Control-Allow-Methods") is None


def test_no_cors_headers_without_origin(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=MiB)
    sock = daemon.raw_tls()
    try:
        resp, _ = send(
            sock, "OPTIONS", f"/images/{ticket_id}", {"Access-Control-Request-Method": "PUT"}
        )
    finally:
        sock.close()
    # Without Origin it is no preflight: an ordinary, authorized OPTIONS.
    assert resp.status == 200
    assert resp.getheader("Allow")
    assert not [k for k, _ in resp.getheaders() if k.lower().startswith("access-control-")]
