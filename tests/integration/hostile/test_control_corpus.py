"""Hostile and careless input on the JSON-RPC control channel.

Each case is one line (or a few bytes) sent on a fresh control connection
of a real daemon. It asserts the reply (the error code of one reply, the
codes of a batch reply, or no reply at all), that the connection still
answers in order, and that the daemon is unharmed: alive, no traceback,
no ticket added or changed, no image touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.hostile.control_support import (
    BAD_TIMEOUTS,
    LineClient,
    World,
    assert_daemon_healthy,
    log_mark,
    make_world,
)

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

PARSE = -32700
INVALID_REQUEST = -32600
NO_METHOD = -32601
INVALID_PARAMS = -32602
NOT_FOUND = 100
CONFLICT = 101
# vdsm's ImageDaemonError: what the Host verbs answer, as vdsm does.
IMAGE_DAEMON_ERROR = 482
OK = 0  # a result, not an error
MAX_LINE = 1024**2
MAX_BATCH = 100
MAX_DEPTH = 64


@dataclass(frozen=True)
class Case:
    name: str
    # The bytes to send; a callable gets the world (ticket ids, images).
    line: bytes | Any
    # One reply: its error code (OK for a result). A list: a batch reply,
    # one outcome per member. None: no reply at all.
    expect: int | list[int] | None
    field: str | None = None  # data.field of a -32602
    mentions: str | None = None  # in the error message (vdsm's errors have no data)

    def data(self, world: World) -> bytes:
        line = self.line(world) if callable(self.line) else self.line
        return line if line.endswith(b"\n") else line + b"\n"


def req(method: str, params: Any = None, ident: Any = 1, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": ident, **extra}
    if params is not None:
        r["params"] = params
    return r


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def add(**change: Any) -> Any:
    """Ticket.add of a new ticket with some fields changed."""
    return lambda w: line(req("Ticket.add", {"ticket": w.new_ticket(**change)}))


def add_raw(field: str, text: str) -> Any:
    """Ticket.add with one field's JSON text as given (not valid JSON)."""

    def build(w: World) -> bytes:
        ticket = json.dumps(w.new_ticket(**{field: "@@"}))
        return line(req("Ticket.add", {"ticket": "@@TICKET"})).replace(
            b'"@@TICKET"', ticket.replace('"@@"', text).encode()
        )

    return build


def add_volume(**volume: Any) -> Any:
    base = {"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}

    def build(w: World) -> bytes:
        ticket = w.new_ticket(volume={**base, **volume})
        del ticket["url"]
        return line(req("Ticket.add", {"ticket": ticket}))

    return build


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


WIRE = [
    Case("garbage", b"hello, are you JSON?", PARSE),
    Case("binary", bytes(range(1, 10)) + b"\x80\xfe", PARSE),
    Case("invalid-utf8-byte", b'{"jsonrpc": "2.0", "method": "Ticket.list", "id": "\xff"}', PARSE),
    Case("overlong-utf8", b'{"jsonrpc": "2.0", "method": "Ticket.list", "id": "\xc0\xaf"}', PARSE),
    Case("utf16-text", '{"jsonrpc": "2.0"}'.encode("utf-16"), PARSE),
    Case("nul-byte", b"\x00", PARSE),
    Case("bom", b"\xef\xbb\xbf" + line(req("Ticket.list")), PARSE),
    Case("truncated", line(req("Ticket.list"))[:-1], PARSE),
    Case("trailing-garbage", line(req("Ticket.list")) + b" x", PARSE),
    Case("two-objects", line(req("Ticket.list")) * 2, PARSE),
    Case("single-quotes", b"{'jsonrpc': '2.0', 'method': 'Ticket.list', 'id': 1}", PARSE),
    Case("nan", b'{"jsonrpc": "2.0", "method": "Ticket.status", "params": [NaN], "id": 1}', PARSE),
    Case("infinity", b'{"jsonrpc": "2.0", "method": "Ticket.list", "id": Infinity}', PARSE),
    Case("minus-infinity", b'{"jsonrpc": "2.0", "method": "Ticket.list", "id": -Infinity}', PARSE),
    Case("id-1e400", b'{"jsonrpc": "2.0", "method": "Ticket.list", "id": 1e400}', PARSE),
    Case(
        "5000-digit-id",
        b'{"jsonrpc": "2.0", "method": "Ticket.list", "id": 1' + b"0" * 5000 + b"}",
        PARSE,
    ),
    Case("nested-2000-arrays", nested(2000), PARSE),
    Case("nested-2000-objects", b'{"a":' * 2000 + b"1" + b"}" * 2000, PARSE),
    Case("nested-100000-open", b"[" * 100_000, PARSE),
    Case("nested-over-limit", nested(MAX_DEPTH + 1), PARSE),
    Case(
        "deep-params",
        b'{"jsonrpc": "2.0", "method": "Ticket.add", "id": 1, "params": {"ticket": '
        + nested(MAX_DEPTH)
        + b"}}",
        PARSE,
    ),
    Case(
        "line-over-limit",
        line(req("Ticket.status", {"uuid": "x" * (MAX_LINE + 1)})),
        INVALID_REQUEST,
    ),
    Case("line-over-limit-no-json", b" " * (2 * MAX_LINE) + b"x", INVALID_REQUEST),
    Case("json-scalar", b"42", INVALID_REQUEST),
    Case("json-string", b'"Ticket.list"', INVALID_REQUEST),
    Case("json-null", b"null", INVALID_REQUEST),
    Case("empty-object", b"{}", INVALID_REQUEST),
    Case("empty-batch", b"[]", INVALID_REQUEST),
    Case(
        "batch-over-limit",
        line([req("Ticket.list", ident=i) for i in range(MAX_BATCH + 1)]),
        INVALID_REQUEST,
    ),
    Case(
        "batch-at-limit",
        line([req("Ticket.status", {"uuid": "no"}, ident=i) for i in range(MAX_BATCH)]),
        [NOT_FOUND] * MAX_BATCH,
    ),
    Case("batch-of-garbage", b"[1, 2, 3]", [INVALID_REQUEST] * 3),
    Case("batch-of-empty-batches", b"[[], []]", [INVALID_REQUEST] * 2),
    Case(
        "batch-mixed",
        line(
            [
                req("Ticket.list"),
                "x",
                req("No.such", ident=2),
                {"jsonrpc": "2.0"},
                req("Ticket.list", ident=3),
            ]
        ),
        [OK, INVALID_REQUEST, NO_METHOD, INVALID_REQUEST, OK],
    ),
    Case("batch-nested", line([[req("Ticket.list")]]), [INVALID_REQUEST]),
    Case("batch-of-notifications", line([{"jsonrpc": "2.0", "method": "No.such"}] * 5), None),
    Case(
        "batch-of-bad-notifications",
        lambda w: line(
            [
                {
                    "jsonrpc": "2.0",
                    "method": "Ticket.add",
                    "params": {"ticket": w.new_ticket(size=-1)},
                }
            ]
            * 3
        ),
        None,
    ),
    Case("notification-unknown-method", line({"jsonrpc": "2.0", "method": "No.such"}), None),
    Case(
        "notification-bad-params",
        line({"jsonrpc": "2.0", "method": "Ticket.extend", "params": {"uuid": 1}}),
        None,
    ),
    Case(
        "notification-bad-ticket",
        lambda w: line(
            {
                "jsonrpc": "2.0",
                "method": "Ticket.add",
                "params": {"ticket": w.new_ticket(size=2**64)},
            }
        ),
        None,
    ),
    Case("extra-member", line(req("Ticket.list", extra_member=1)), INVALID_REQUEST),
    Case(
        "params-text",
        b'{"jsonrpc": "2.0", "method": "Ticket.list", "params": "x", "id": 1}',
        INVALID_REQUEST,
    ),
    Case(
        "params-number",
        b'{"jsonrpc": "2.0", "method": "Ticket.list", "params": 7, "id": 1}',
        INVALID_REQUEST,
    ),
    Case(
        "params-true",
        b'{"jsonrpc": "2.0", "method": "Ticket.list", "params": true, "id": 1}',
        INVALID_REQUEST,
    ),
    Case(
        "params-null",
        b'{"jsonrpc": "2.0", "method": "Ticket.list", "params": null, "id": 1}',
        INVALID_REQUEST,
    ),
    Case(
        "jsonrpc-1.0", line({"jsonrpc": "1.0", "method": "Ticket.list", "id": 1}), INVALID_REQUEST
    ),
    Case(
        "jsonrpc-number", line({"jsonrpc": 2.0, "method": "Ticket.list", "id": 1}), INVALID_REQUEST
    ),
    Case("jsonrpc-missing", line({"method": "Ticket.list", "id": 1}), INVALID_REQUEST),
    Case("method-number", line({"jsonrpc": "2.0", "method": 5, "id": 1}), INVALID_REQUEST),
    Case("method-null", line({"jsonrpc": "2.0", "method": None, "id": 1}), INVALID_REQUEST),
    Case(
        "method-list", line({"jsonrpc": "2.0", "method": ["Ticket.list"], "id": 1}), INVALID_REQUEST
    ),
    Case("method-missing", line({"jsonrpc": "2.0", "id": 1}), INVALID_REQUEST),
    Case("id-true", line(req("Ticket.list", ident=True)), INVALID_REQUEST),
    Case("id-list", line(req("Ticket.list", ident=[1])), INVALID_REQUEST),
    Case("id-object", line(req("Ticket.list", ident={"a": 1})), INVALID_REQUEST),
    Case("id-empty-string", line(req("Ticket.list", ident="")), OK),
    Case("id-zero", line(req("Ticket.list", ident=0)), OK),
    Case("id-negative", line(req("Ticket.list", ident=-1)), OK),
    Case("id-2**64", line(req("Ticket.list", ident=2**64)), OK),
    Case("id-4000-digits", line(req("Ticket.list", ident=10**3999)), OK),
    Case("id-fraction", line(req("Ticket.list", ident=1.5)), OK),
    Case("id-null", line(req("Ticket.list", ident=None)), OK),
    Case("id-long-string", line(req("Ticket.list", ident="i" * 100_000)), OK),
    Case("id-control-chars", line(req("Ticket.list", ident="\x00\n\x1b[31m")), OK),
    Case("method-unknown", line(req("No.such")), NO_METHOD),
    Case("method-empty", line(req("")), NO_METHOD),
    Case("method-private", line(req("Ticket._registry")), NO_METHOD),
    Case("method-dunder", line(req("__class__")), NO_METHOD),
]

PARAMS = [
    Case("add-no-params", line(req("Ticket.add")), INVALID_PARAMS, "ticket"),
    Case(
        "add-unknown-param",
        line(req("Ticket.add", {"ticket": {}, "force": True})),
        INVALID_PARAMS,
        "force",
    ),
    Case("add-positional-extra", line(req("Ticket.add", [{}, {}])), INVALID_PARAMS, "params"),
    Case("add-ticket-null", line(req("Ticket.add", {"ticket": None})), INVALID_PARAMS, "ticket"),
    Case("add-ticket-list", line(req("Ticket.add", {"ticket": []})), INVALID_PARAMS, "ticket"),
    Case(
        "add-ticket-string", line(req("Ticket.add", {"ticket": "uuid"})), INVALID_PARAMS, "ticket"
    ),
    Case("add-ticket-empty", line(req("Ticket.add", {"ticket": {}})), INVALID_PARAMS, "uuid"),
    Case("status-uuid-number", line(req("Ticket.status", {"uuid": 1})), INVALID_PARAMS, "uuid"),
    Case("status-uuid-null", line(req("Ticket.status", {"uuid": None})), INVALID_PARAMS, "uuid"),
    Case("status-uuid-empty", line(req("Ticket.status", {"uuid": ""})), INVALID_PARAMS, "uuid"),
    Case(
        "status-uuid-deep",
        line(req("Ticket.status", {"uuid": json.loads(nested(MAX_DEPTH - 3))})),
        INVALID_PARAMS,
        "uuid",
    ),
    Case("status-uuid-surrogate", line(req("Ticket.status", {"uuid": "\udc80"})), NOT_FOUND),
    Case("status-unknown", line(req("Ticket.status", {"uuid": "no-such"})), NOT_FOUND),
    Case("remove-uuid-list", line(req("Ticket.remove", {"uuid": ["x"]})), INVALID_PARAMS, "uuid"),
    Case("remove-uuid-missing", line(req("Ticket.remove", {})), INVALID_PARAMS, "uuid"),
    Case("list-with-param", line(req("Ticket.list", {"all": True})), INVALID_PARAMS, "all"),
    Case(
        "subscribe-events-string",
        line(req("Events.subscribe", {"events": "Ticket.removed"})),
        INVALID_PARAMS,
        "events",
    ),
    Case(
        "subscribe-events-numbers",
        line(req("Events.subscribe", {"events": [1, 2]})),
        INVALID_PARAMS,
        "events",
    ),
    Case(
        "subscribe-events-empty",
        line(req("Events.subscribe", {"events": []})),
        INVALID_PARAMS,
        "events",
    ),
    Case(
        "subscribe-unknown-long-name",
        line(req("Events.subscribe", {"events": ["E" * 100_000]})),
        INVALID_PARAMS,
        "events",
    ),
    Case("info-positional", line(req("Service.info", [1])), INVALID_PARAMS, "params"),
]


def extend(method: str, timeout: Any) -> Any:
    return lambda w: line(req(method, {"uuid": w.writable, "timeout": timeout}))


EXTEND = [
    *[
        Case(
            f"{method}-timeout-{name}",
            extend(method, value),
            *(
                (INVALID_PARAMS, "timeout")
                if method == "Ticket.extend"
                else (IMAGE_DAEMON_ERROR, None, "status=400, reason=Bad Request")
            ),
        )
        for method in ("Ticket.extend", "Host.extend_image_ticket")
        for name, value in BAD_TIMEOUTS
    ],
    Case(
        "extend-unknown", line(req("Ticket.extend", {"uuid": "no-such", "timeout": 1})), NOT_FOUND
    ),
    Case(
        "extend-timeout-nan",
        lambda w: (
            b'{"jsonrpc": "2.0", "method": "Ticket.extend", "id": 1, "params": {"uuid": "'
            + w.writable.encode()
            + b'", "timeout": NaN}}'
        ),
        PARSE,
    ),
]

TICKET_FIELDS = [
    # Defect 4 of the issue, one by one.
    Case("url-percent-nul", add(url="file:///a%00b"), INVALID_PARAMS, "url"),
    Case("url-nul", add(url="file:///a\x00b"), INVALID_PARAMS, "url"),
    Case("url-unclosed-ipv6", add(url="http://[1.2.3.4:33"), INVALID_PARAMS, "url"),
    Case("url-https-unclosed-ipv6", add(url="https://[::1/images/x"), INVALID_PARAMS, "url"),
    Case("url-bad-port", add(url="https://host:99999/images/x"), INVALID_PARAMS, "url"),
    Case("url-newline", add(url="file:///var/tmp/a\nb"), INVALID_PARAMS, "url"),
    Case("url-percent-newline", add(url="file:///var/tmp/a%0Ab"), INVALID_PARAMS, "url"),
    Case("url-not-utf8", add(url="file:///var/tmp/%ff"), INVALID_PARAMS, "url"),
    Case("url-other-host", add(url="file://elsewhere/etc/hosts"), INVALID_PARAMS, "url"),
    Case("url-relative", add(url="file:var/tmp/x"), INVALID_PARAMS, "url"),
    Case("url-scheme", add(url="ftp://host/x"), INVALID_PARAMS, "url"),
    Case("url-nbd-tcp", add(url="nbd:tcp:localhost:10809"), INVALID_PARAMS, "url"),
    Case("url-number", add(url=7), INVALID_PARAMS, "url"),
    Case(
        "url-and-volume",
        add(volume={"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}),
        INVALID_PARAMS,
        "url",
    ),
    Case("size-2**63", add(size=2**63), INVALID_PARAMS, "size"),
    Case("size-2**64", add(size=2**64), INVALID_PARAMS, "size"),
    Case("size-10**4000", add(size=10**4000), INVALID_PARAMS, "size"),
    Case("size-negative-huge", add(size=-(10**4000)), INVALID_PARAMS, "size"),
    Case("size-5000-digits", add_raw("size", "1" + "0" * 5000), PARSE),
    Case("size-1e400", add_raw("size", "1e400"), PARSE),
    Case("size-nan", add_raw("size", "NaN"), PARSE),
    Case("size-negative", add(size=-1), INVALID_PARAMS, "size"),
    Case("size-true", add(size=True), INVALID_PARAMS, "size"),
    Case("size-float", add(size=4096.0), INVALID_PARAMS, "size"),
    Case("size-string", add(size="4096"), INVALID_PARAMS, "size"),
    Case("size-null", add(size=None), INVALID_PARAMS, "size"),
    Case("size-list", add(size=[4096]), INVALID_PARAMS, "size"),
    Case("size-object", add(size={"bytes": 4096}), INVALID_PARAMS, "size"),
    Case("size-deep", add(size=json.loads(nested(MAX_DEPTH - 4))), INVALID_PARAMS, "size"),
    Case("timeout-2**31", add(timeout=2**31), INVALID_PARAMS, "timeout"),
    Case("timeout-float", add(timeout=1.5), INVALID_PARAMS, "timeout"),
    Case("timeout-false", add(timeout=False), INVALID_PARAMS, "timeout"),
    Case("inactivity-negative", add(inactivity_timeout=-1), INVALID_PARAMS, "inactivity_timeout"),
    Case("inactivity-2**64", add(inactivity_timeout=2**64), INVALID_PARAMS, "inactivity_timeout"),
    Case("inactivity-string", add(inactivity_timeout="60"), INVALID_PARAMS, "inactivity_timeout"),
    Case("uuid-surrogate", add(uuid="\udc80"), INVALID_PARAMS, "uuid"),
    Case("uuid-nul", add(uuid="a\x00b"), INVALID_PARAMS, "uuid"),
    Case("uuid-newline", add(uuid="a\nb"), INVALID_PARAMS, "uuid"),
    Case("uuid-empty", add(uuid=""), INVALID_PARAMS, "uuid"),
    Case("uuid-number", add(uuid=12345), INVALID_PARAMS, "uuid"),
    Case("transfer-id-space", add(transfer_id="t 1 size=0"), INVALID_PARAMS, "transfer_id"),
    Case("transfer-id-newline", add(transfer_id="t\nFORGED line"), INVALID_PARAMS, "transfer_id"),
    Case("transfer-id-escape", add(transfer_id="\x1b[2J"), INVALID_PARAMS, "transfer_id"),
    Case("transfer-id-list", add(transfer_id=["t"]), INVALID_PARAMS, "transfer_id"),
    Case("filename-nul", add(filename="disk\x00.raw"), INVALID_PARAMS, "filename"),
    Case("filename-number", add(filename=1), INVALID_PARAMS, "filename"),
    Case("ops-empty", add(ops=[]), INVALID_PARAMS, "ops"),
    Case("ops-string", add(ops="write"), INVALID_PARAMS, "ops"),
    Case("ops-unknown", add(ops=["delete"]), INVALID_PARAMS, "ops"),
    Case("ops-nested", add(ops=[["read"]]), INVALID_PARAMS, "ops"),
    Case("ops-object", add(ops={"read": True}), INVALID_PARAMS, "ops"),
    Case("sparse-string", add(sparse="yes"), INVALID_PARAMS, "sparse"),
    Case("dirty-number", add(dirty=1), INVALID_PARAMS, "dirty"),
    Case("volume-string", add(url=None, volume="file"), INVALID_PARAMS, "volume"),
    Case("volume-empty", add_volume(domain=None), INVALID_PARAMS, "volume.domain"),
    Case("volume-domain", add_volume(domain="nfs"), INVALID_PARAMS, "volume.domain"),
    Case("volume-sd-id-path", add_volume(sd_id="../../etc"), INVALID_PARAMS, "volume.sd_id"),
    Case("volume-img-id-nul", add_volume(img_id="a\x00"), INVALID_PARAMS, "volume.img_id"),
    Case("volume-vol-id-number", add_volume(vol_id=5), INVALID_PARAMS, "volume.vol_id"),
    Case("volume-format", add_volume(format="qcow2"), INVALID_PARAMS, "volume.format"),
    Case("volume-format-list", add_volume(format=["raw"]), INVALID_PARAMS, "volume.format"),
    Case("volume-nbd-string", add_volume(nbd="true"), INVALID_PARAMS, "volume.nbd"),
    Case("volume-bitmap-empty", add_volume(bitmap=""), INVALID_PARAMS, "volume.bitmap"),
    Case("volume-lease-string", add_volume(lease="/dev/leases"), INVALID_PARAMS, "volume.lease"),
    Case(
        "volume-lease-no-offset",
        add_volume(lease={"path": "/l"}),
        INVALID_PARAMS,
        "volume.lease.offset",
    ),
    Case(
        "volume-lease-offset-2**63",
        add_volume(lease={"path": "/l", "offset": 2**63}),
        INVALID_PARAMS,
        "volume.lease.offset",
    ),
    Case(
        "volume-lease-path-nul",
        add_volume(lease={"path": "/l\x00", "offset": 0}),
        INVALID_PARAMS,
        "volume.lease.path",
    ),
    Case(
        "host-add-size-2**64",
        lambda w: line(req("Host.add_image_ticket", {"ticket": w.new_ticket(size=2**64)})),
        IMAGE_DAEMON_ERROR,
        mentions="status=400, reason=Bad Request, error=Invalid ticket field 'size'",
    ),
    Case(
        "host-add-url-nul",
        lambda w: line(req("Host.add_image_ticket", {"ticket": w.new_ticket(url="file:///a%00b")})),
        IMAGE_DAEMON_ERROR,
        mentions="status=400, reason=Bad Request, error=Invalid ticket field 'url'",
    ),
    Case(
        "host-add-existing-outside-roots",
        lambda w: line(
            req(
                "Host.add_image_ticket",
                {"ticket": w.new_ticket(uuid=w.writable, url="file:///etc/passwd")},
            )
        ),
        IMAGE_DAEMON_ERROR,
        mentions="status=400, reason=Bad Request, error=Invalid ticket field 'url'",
    ),
    Case(
        "host-add-not-an-object",
        line(req("Host.add_image_ticket", {"ticket": [1]})),
        IMAGE_DAEMON_ERROR,
        mentions="error=Invalid ticket field 'ticket'",
    ),
    Case(
        "host-get-unknown",
        line(req("Host.get_image_ticket", {"uuid": "no-such"})),
        IMAGE_DAEMON_ERROR,
        mentions="'status=404, reason=Not Found, error=No such ticket: no-such\\n'",
    ),
    Case(
        "host-get-uuid-number",
        line(req("Host.get_image_ticket", {"uuid": 7})),
        IMAGE_DAEMON_ERROR,
        mentions="status=400",
    ),
    Case("host-get-no-uuid", line(req("Host.get_image_ticket", {})), INVALID_PARAMS, "uuid"),
    Case(
        "host-remove-extra-param",
        lambda w: line(req("Host.remove_image_ticket", {"uuid": w.writable, "force": True})),
        INVALID_PARAMS,
        "force",
    ),
    Case(
        "add-existing-with-other-size",
        lambda w: line(
            req("Ticket.add", {"ticket": {**w.new_ticket(uuid=w.writable), "size": 4096}})
        ),
        CONFLICT,
    ),
    Case(
        "add-existing-read-only-as-writer",
        lambda w: line(
            req(
                "Ticket.add",
                {"ticket": {**w.new_ticket(uuid=w.readonly), "url": w.readonly_image.as_uri()}},
            )
        ),
        CONFLICT,
    ),
]

CASES = WIRE + PARAMS + EXTEND + TICKET_FIELDS


@pytest.fixture(scope="module")
def world(daemon: Daemon) -> World:
    return make_world(daemon)


@pytest.fixture
def client(world: World) -> Iterator[LineClient]:
    c = LineClient(world.daemon.control_path)
    yield c
    c.close()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 100
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_control_request(case: Case, world: World, client: LineClient) -> None:
    before = world.snapshot()
    mark = log_mark(world.daemon)
    client.send(case.data(world))
    if case.expect is not None:
        reply = client.recv()
        assert reply is not None, "the daemon closed the connection"
        check_reply(case, reply)
    # The next reply answers the probe: a refused line left nothing behind.
    assert client.probe(), "the connection no longer answers"
    assert world.snapshot() == before
    assert_daemon_healthy(world.daemon, since=mark)


def check_reply(case: Case, reply: Any) -> None:
    if isinstance(case.expect, list):
        assert isinstance(reply, list), reply
        assert [outcome(r) for r in reply] == case.expect
        return
    assert isinstance(reply, dict), reply
    assert outcome(reply) == case.expect, reply
    if case.expect in (PARSE, INVALID_REQUEST):
        assert reply["id"] is None
    if case.field is not None:
        assert reply["error"]["data"]["field"] == case.field, reply
    if case.mentions is not None:
        assert case.mentions in reply["error"]["message"], reply
        assert "data" not in reply["error"], reply
    if "error" in reply:
        # Short enough for a log line, whatever the request held.
        assert len(json.dumps(reply)) < 1000, reply


def outcome(reply: dict[str, Any]) -> int:
    assert reply.get("jsonrpc") == "2.0", reply
    if "result" in reply:
        return OK
    code = reply["error"]["code"]
    assert isinstance(code, int)
    return code


def test_other_connections_are_served_while_one_sends_a_huge_line(world: World) -> None:
    mark = log_mark(world.daemon)
    hostile = LineClient(world.daemon.control_path)
    calm = LineClient(world.daemon.control_path)
    try:
        hostile.send(b"[" * (MAX_LINE // 2))  # half a line, no newline yet
        assert calm.probe()
        hostile.send(b"[" * MAX_LINE)
        assert hostile.recv()["error"]["code"] == INVALID_REQUEST
        assert calm.probe()
        hostile.send(b"]\n")
        assert hostile.probe()
    finally:
        hostile.close()
        calm.close()
    assert_daemon_healthy(world.daemon, since=mark)
