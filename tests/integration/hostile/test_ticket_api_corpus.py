"""Hostile and careless input on the HTTP ticket API (/tickets/<uuid>).

The unix socket that an unmodified vdsm drives. Each case is one request
on a fresh connection of a real daemon; it asserts the status, the field
named in the message, whether the connection stays open (a follow-up GET
is answered) or is closed, and that the daemon is unharmed: alive, no
traceback, no ticket added or changed, no image touched.
"""

from __future__ import annotations

import json
import socket
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration import rawhttp
from tests.integration.hostile.control_support import (
    BAD_TIMEOUTS,
    IO_TIMEOUT,
    World,
    assert_daemon_healthy,
    log_mark,
    make_world,
)

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MAX_BODY = 64 * 1024
NEW = "@new"  # the target's uuid: a new one, also in the body
RW = "@rw"  # the writable ticket's uuid

Body = bytes | Callable[[World, str], bytes]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    uuid: str  # NEW, RW, or the literal (percent-encoded) path segment
    body: Body | None
    status: int
    mentions: str | None = None  # what the one-line message must name
    open: bool = True
    headers: dict[str, str] = field(default_factory=dict)


def ticket(**change: Any) -> Body:
    """A valid ticket for the target's uuid on the spare image, then changed."""

    def build(w: World, uuid: str) -> bytes:
        return json.dumps({**w.new_ticket(uuid=uuid), **change}).encode()

    return build


def raw_field(name: str, text: str) -> Body:
    """A ticket whose field name holds text as is (not valid JSON)."""

    def build(w: World, uuid: str) -> bytes:
        body = json.dumps(w.new_ticket(uuid=uuid, **{name: "@@"}))
        return body.replace('"@@"', text).encode()

    return build


def volume(**change: Any) -> Body:
    base = {"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}

    def build(w: World, uuid: str) -> bytes:
        t = w.new_ticket(uuid=uuid, volume={**base, **change})
        del t["url"]
        return json.dumps(t).encode()

    return build


def nested(depth: int) -> Any:
    return json.loads("[" * depth + "]" * depth)


PUT_FIELDS = [
    Case("url-percent-nul", "PUT", NEW, ticket(url="file:///a%00b"), 400, "url"),
    Case("url-nul", "PUT", NEW, ticket(url="file:///a\x00b"), 400, "url"),
    Case("url-unclosed-ipv6", "PUT", NEW, ticket(url="http://[1.2.3.4:33"), 400, "url"),
    Case("url-bad-port", "PUT", NEW, ticket(url="https://h:99999/images/x"), 400, "url"),
    Case("url-percent-newline", "PUT", NEW, ticket(url="file:///var/tmp/a%0a"), 400, "url"),
    Case("url-not-utf8", "PUT", NEW, ticket(url="file:///var/tmp/%ff"), 400, "url"),
    Case("url-list", "PUT", NEW, ticket(url=["file:///x"]), 400, "url"),
    Case("size-2**63", "PUT", NEW, ticket(size=2**63), 400, "size"),
    Case("size-2**64", "PUT", NEW, ticket(size=2**64), 400, "size"),
    Case("size-10**4000", "PUT", NEW, ticket(size=10**4000), 400, "size"),
    Case("size-5000-digits", "PUT", NEW, raw_field("size", "1" + "0" * 5000), 400, "JSON"),
    Case("size-1e400", "PUT", NEW, raw_field("size", "1e400"), 400, "size"),
    Case("size-nan", "PUT", NEW, raw_field("size", "NaN"), 400, "size"),
    Case("size-infinity", "PUT", NEW, raw_field("size", "-Infinity"), 400, "size"),
    Case("size-negative", "PUT", NEW, ticket(size=-1), 400, "size"),
    Case("size-true", "PUT", NEW, ticket(size=True), 400, "size"),
    Case("size-float", "PUT", NEW, ticket(size=4096.0), 400, "size"),
    Case("size-string", "PUT", NEW, ticket(size="4096"), 400, "size"),
    Case("size-null", "PUT", NEW, ticket(size=None), 400, "size"),
    Case("size-object", "PUT", NEW, ticket(size={"b": 1}), 400, "size"),
    Case("size-nested", "PUT", NEW, ticket(size=nested(20)), 400, "size"),
    # Deeper than the JSON body limit: refused before the fields are looked at.
    Case("size-deep", "PUT", NEW, ticket(size=nested(100)), 400, "JSON"),
    Case("body-2000-brackets", "PUT", NEW, b"[" * 2000 + b"]" * 2000, 400, "JSON"),
    Case("timeout-2**31", "PUT", NEW, ticket(timeout=2**31), 400, "timeout"),
    Case("timeout-list", "PUT", NEW, ticket(timeout=[1]), 400, "timeout"),
    Case("inactivity-negative", "PUT", NEW, ticket(inactivity_timeout=-1), 400, "inactivity"),
    Case("uuid-differs", "PUT", NEW, ticket(uuid=str(uuidlib.uuid4())), 400, "uuid"),
    Case("uuid-number", "PUT", NEW, ticket(uuid=5), 400, "uuid"),
    Case(
        "uuid-nul-in-path",
        "PUT",
        "a%00b",
        lambda w, u: json.dumps(w.new_ticket(uuid="a\x00b")).encode(),
        400,
        "request target",
        open=False,
    ),
    Case(
        "uuid-newline-in-path",
        "PUT",
        "a%0Ab",
        lambda w, u: json.dumps(w.new_ticket(uuid="a\nb")).encode(),
        400,
        "request target",
        open=False,
    ),
    Case("transfer-id-space", "PUT", NEW, ticket(transfer_id="a b"), 400, "transfer_id"),
    Case("transfer-id-newline", "PUT", NEW, ticket(transfer_id="a\nb"), 400, "transfer_id"),
    Case("transfer-id-surrogate", "PUT", NEW, ticket(transfer_id="\udc80"), 400, "transfer_id"),
    Case("filename-nul", "PUT", NEW, ticket(filename="a\x00"), 400, "filename"),
    Case("ops-empty", "PUT", NEW, ticket(ops=[]), 400, "ops"),
    Case("ops-unknown", "PUT", NEW, ticket(ops=["delete"]), 400, "ops"),
    Case("sparse-string", "PUT", NEW, ticket(sparse="true"), 400, "sparse"),
    Case("dirty-list", "PUT", NEW, ticket(dirty=[]), 400, "dirty"),
    Case("volume-domain", "PUT", NEW, volume(domain="nfs"), 400, "volume.domain"),
    Case("volume-sd-id", "PUT", NEW, volume(sd_id="../x"), 400, "volume.sd_id"),
    Case(
        "volume-lease-offset",
        "PUT",
        NEW,
        volume(lease={"path": "/l", "offset": 2**63}),
        400,
        "volume.lease.offset",
    ),
    Case(
        "volume-and-url",
        "PUT",
        NEW,
        ticket(volume={"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}),
        400,
        "exactly one of url and volume",
    ),
]

PUT_BODIES = [
    Case("body-empty", "PUT", NEW, b"", 400, "JSON"),
    Case("body-garbage", "PUT", NEW, b"ticket please", 400, "JSON"),
    Case("body-invalid-utf8", "PUT", NEW, b'{"uuid": "\xff"}', 400, "JSON"),
    Case("body-array", "PUT", NEW, b"[]", 400, "JSON"),
    Case("body-string", "PUT", NEW, b'"ticket"', 400, "JSON"),
    Case("body-null", "PUT", NEW, b"null", 400, "JSON"),
    Case("body-empty-object", "PUT", NEW, b"{}", 400, "size"),
    Case("body-truncated", "PUT", NEW, b'{"uuid": "x", "size": 1', 400, "JSON"),
    Case("body-too-large", "PUT", NEW, b"{" + b" " * MAX_BODY + b"}", 413, "limit", open=False),
    Case(
        "body-text-plain",
        "PUT",
        NEW,
        b"",
        415,
        "application/json",
        headers={"Content-Type": "text/plain"},
    ),
]

# Other content replaces a live ticket (as ovirt-imageio does); content
# that would be refused for a new ticket leaves the live one as it was.
PUT_EXISTING = [
    Case("existing-negative-size", "PUT", RW, ticket(size=-1), 400, "size"),
    Case("existing-ops-unknown", "PUT", RW, ticket(ops=["write", "x"]), 400, "ops"),
    Case("existing-url-outside-roots", "PUT", RW, ticket(url="file:///etc/passwd"), 400, "url"),
    Case("existing-url-missing", "PUT", RW, ticket(url="file:///nowhere/x.raw"), 400, "url"),
]

PATCH = [
    *[
        Case(
            f"patch-timeout-{name}",
            "PATCH",
            RW,
            json.dumps({"timeout": v}).encode(),
            400,
            "timeout",
        )
        for name, v in [*BAD_TIMEOUTS, ("nested", nested(20))]
    ],
    Case("patch-timeout-nan", "PATCH", RW, b'{"timeout": NaN}', 400, "timeout"),
    Case("patch-timeout-1e400", "PATCH", RW, b'{"timeout": 1e400}', 400, "timeout"),
    Case("patch-empty-object", "PATCH", RW, b"{}", 400, "timeout"),
    Case("patch-size", "PATCH", RW, b'{"timeout": 30, "size": 1}', 400, "size"),
    Case("patch-ops", "PATCH", RW, b'{"ops": ["read"]}', 400, "ops"),
    Case("patch-odd-key", "PATCH", RW, json.dumps({"\x00" * 1000: 1}).encode(), 400, "cannot"),
    Case("patch-array", "PATCH", RW, b"[30]", 400, "JSON"),
    Case("patch-garbage", "PATCH", RW, b"timeout=30", 400, "JSON"),
    Case("patch-unknown-ticket", "PATCH", NEW, b'{"timeout": 30}', 404, None),
]

OTHERS = [
    Case("get-unknown", "GET", NEW, None, 404, None),
    # A control character in the target is a malformed head: refused, closed.
    Case("get-nul", "GET", "%00", None, 400, "request target", open=False),
    Case("get-no-uuid", "GET", "", None, 400, "ticket id"),
    Case("put-no-uuid", "PUT", "", ticket(), 400, "ticket id"),
    Case("patch-no-uuid", "PATCH", "", b'{"timeout": 30}', 400, "ticket id"),
    Case("delete-unknown", "DELETE", NEW, None, 204, None),
    Case("post", "POST", NEW, None, 405, None),
]

CASES = PUT_FIELDS + PUT_BODIES + PUT_EXISTING + PATCH + OTHERS


@pytest.fixture(scope="module")
def world(daemon: Daemon) -> World:
    return make_world(daemon)


@pytest.fixture
def sock(world: World) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(IO_TIMEOUT)
    s.connect(str(world.daemon.dir / "tickets.sock"))
    yield s
    s.close()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_ticket_api_request(case: Case, world: World, sock: socket.socket) -> None:
    uuid = {NEW: str(uuidlib.uuid4()), RW: world.writable}.get(case.uuid, case.uuid)
    body = case.body(world, uuid) if callable(case.body) else case.body
    headers = dict(case.headers)
    if body is not None:
        headers["Content-Length"] = str(len(body))
    before = world.snapshot()
    mark = log_mark(world.daemon)

    resp, text = rawhttp.send(sock, case.method, f"/tickets/{uuid}", headers, body or b"")

    assert resp.status == case.status, text
    if case.status >= 400:
        assert resp.getheader("Content-Type", "").startswith("text/plain")
        assert text.endswith(b"\n") and text.count(b"\n") == 1, text
        assert len(text) < 400, text
    if case.mentions is not None:
        assert case.mentions.encode() in text, text
    if case.open:
        reply, _ = rawhttp.send(sock, "GET", f"/tickets/{world.writable}")
        assert reply.status == 200, "the connection no longer answers"
    else:
        assert rawhttp.closed_by_server(sock)
    assert world.snapshot() == before
    assert_daemon_healthy(world.daemon, since=mark)
