"""Control corpus cases about the wire and the call: framing, JSON, batches,
methods and their parameters.
"""

from __future__ import annotations

import json

from tests.integration.hostile.control_requests import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_BATCH,
    MAX_DEPTH,
    MAX_LINE,
    NO_METHOD,
    NOT_FOUND,
    OK,
    PARSE,
    Case,
    line,
    nested,
    req,
)

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
