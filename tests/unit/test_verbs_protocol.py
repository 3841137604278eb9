"""One request line in, one reply line out: the wire rules without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from verbs import protocol
from verbs.errors import verb
from verbs.protocol import notification_line, respond

METHODS = {
    "Echo.say": verb(lambda text: text),
    "Echo.bad": verb(lambda: object()),
}


def reply(line: str | bytes) -> Any:
    raw = line.encode() if isinstance(line, str) else line
    text = respond(raw, METHODS, context=None)
    return None if text is None else json.loads(text)


def request(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    r: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        r["params"] = params
    return r


def test_request_gets_result_with_its_id() -> None:
    assert reply(json.dumps(request("Echo.say", {"text": "hi"}, id="a"))) == {
        "jsonrpc": "2.0",
        "result": "hi",
        "id": "a",
    }


def test_garbage_is_parse_error_with_null_id() -> None:
    r = reply("{not json")
    assert r["error"]["code"] == -32700
    assert r["id"] is None


def test_invalid_utf8_is_parse_error() -> None:
    assert reply(b'{"jsonrpc": "2.0", "method": "\xff"}')["error"]["code"] == -32700


def test_nan_is_parse_error() -> None:
    line = '{"jsonrpc": "2.0", "method": "Echo.say", "params": [NaN], "id": 1}'
    assert reply(line)["error"]["code"] == -32700


def test_json_that_is_not_a_request_is_invalid_request() -> None:
    for line in ('{"hello": 1}', "[]", "42", '{"jsonrpc": "1.0", "method": "x"}'):
        assert reply(line)["error"]["code"] == -32600, line


def test_unknown_method_is_method_not_found() -> None:
    assert reply(json.dumps(request("No.such")))["error"]["code"] == -32601


def test_notification_gets_no_reply() -> None:
    line = json.dumps({"jsonrpc": "2.0", "method": "Echo.say", "params": ["x"]})
    assert reply(line) is None


def test_batch_replies_in_order_and_skips_notifications() -> None:
    batch = [
        request("Echo.say", ["one"], id=1),
        {"jsonrpc": "2.0", "method": "Echo.say", "params": ["quiet"]},
        request("No.such", id=2),
        request("Echo.say", ["three"], id=3),
    ]
    r = reply(json.dumps(batch))
    assert [x["id"] for x in r] == [1, 2, 3]
    assert r[0]["result"] == "one"
    assert r[1]["error"]["code"] == -32601
    assert r[2]["result"] == "three"


def test_batch_of_notifications_gets_no_reply() -> None:
    n = {"jsonrpc": "2.0", "method": "Echo.say", "params": ["x"]}
    assert reply(json.dumps([n, n])) is None


def test_unserializable_result_fails_only_its_request() -> None:
    batch = [request("Echo.bad", id=1), request("Echo.say", ["ok"], id=2)]
    r = reply(json.dumps(batch))
    assert r[0] == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32603, "message": "Internal error, see the log"},
    }
    assert r[1]["result"] == "ok"


def test_notification_line_is_one_line_without_id() -> None:
    line = notification_line("Ticket.removed", {"uuid": "a\nb"})
    assert "\n" not in line
    assert json.loads(line) == {
        "jsonrpc": "2.0",
        "method": "Ticket.removed",
        "params": {"uuid": "a\nb"},
    }


@pytest.mark.parametrize(
    "request_obj",
    [
        {"jsonrpc": "2.0", "method": "m"},
        {"jsonrpc": "2.0", "method": "m", "params": [], "id": 1},
        {"jsonrpc": "2.0", "method": "m", "params": {}, "id": "a"},
        {"jsonrpc": "2.0", "method": "m", "id": None},
        [{"jsonrpc": "2.0", "method": "m", "id": 1.5}],
    ],
)
def test_valid_request_shapes(request_obj) -> None:
    assert protocol.validate(request_obj) is request_obj


@pytest.mark.parametrize(
    "request_obj",
    [
        {"jsonrpc": "1.0", "method": "m"},
        {"method": "m"},
        {"jsonrpc": "2.0"},
        {"jsonrpc": "2.0", "method": 5},
        {"jsonrpc": "2.0", "method": "m", "params": 3},
        {"jsonrpc": "2.0", "method": "m", "id": True},
        {"jsonrpc": "2.0", "method": "m", "id": [1]},
        {"jsonrpc": "2.0", "method": "m", "extra": 1},
        [],
        [{"jsonrpc": "2.0", "method": "m"}, 7],
        "m",
    ],
)
def test_invalid_request_shapes_are_refused(request_obj) -> None:
    with pytest.raises(ValueError):
        protocol.validate(request_obj)
