"""The standing bad-input corpus of the HTTP data API, against a real daemon.

Every case is bytes sent as they are on a fresh connection, over the unix
socket and over TLS, and asserts the status, whether the connection stays
usable or is closed with nothing after the reply, and (through ``guard``)
that the daemon is alive with no traceback and that no image, unrelated
file or ticket changed unless the case is a valid write. ``{rw}`` and
``{ro}`` stand for the writable and the read-only ticket's ids.

The rules the table follows: a head that breaks the grammar is 400 and
closes (nobody knows where the next request starts); a 403, 411, 413 or
431 closes; a 4xx after a well-formed head keeps the connection when the
body is known and small enough to drop.
"""

from __future__ import annotations

import pytest

from tests.integration.hostile.corpus import Guard, Scene, assert_closed, assert_usable, exchange
from tests.integration.hostile.http_cases_framing import (
    CHUNKED,
    FIELDS,
    FRAMING,
    REQUEST_LINE,
    TARGET,
)
from tests.integration.hostile.http_cases_requests import (
    CONTENT_RANGE,
    EXTENTS,
    METHODS,
    OPTIONS,
    PATCH_JSON,
    RANGE,
)
from tests.integration.hostile.http_requests import SIZE, Case

CASES = (
    REQUEST_LINE
    + TARGET
    + FIELDS
    + FRAMING
    + CHUNKED
    + RANGE
    + CONTENT_RANGE
    + PATCH_JSON
    + EXTENTS
    + OPTIONS
    + METHODS
)


def test_corpus_is_large_and_named_uniquely() -> None:
    assert len(CASES) >= 170
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("transport", ["unix", "tls"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(scene: Scene, guard: Guard, case: Case, transport: str) -> None:
    if case.write is not None:
        guard.expect_write(*case.write)
    sock = scene.connect(transport)
    try:
        reply = exchange(sock, scene.fill(case.raw))
        assert reply.status == case.status, reply.body
        if case.body is not None:
            assert reply.body == case.body
        if case.status >= 400:
            assert (reply.header("Content-Type") or "").startswith("text/plain")
            # One line, and never the secret; a reply to HEAD has none.
            head = case.raw.startswith(b"HEAD ")
            assert reply.body.count(b"\n") == (0 if head else 1)
            assert scene.writable.ticket_id.encode() not in reply.body
            assert scene.readonly.ticket_id.encode() not in reply.body
        if case.names is not None:
            assert case.names in reply.body
        if case.status == 416:
            assert reply.header("Content-Range") == f"bytes */{SIZE}"
        if case.keeps_open:
            assert reply.header("Connection") != "close"
            assert_usable(sock, scene)
        else:
            assert_closed(sock)
    finally:
        sock.close()
