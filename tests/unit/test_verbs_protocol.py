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
        {"jsonrpc": "2.0", "method": "m", "id": 1.5},
    ],
)
def test_valid_request_shapes(request_obj: dict[str, Any]) -> None:
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
def test_invalid_request_shapes_are_refused(request_obj: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        protocol.validate(request_obj)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [protocol.MAX_DEPTH + 1, 2000, 100_000])
def test_deep_nesting_is_parse_error(depth: int) -> None:
    r = reply(nested(depth))
    assert r["error"]["code"] == -32700
    assert r["error"]["data"] == f"JSON nested deeper than {protocol.MAX_DEPTH} levels"
    assert r["id"] is None


def test_deep_params_within_the_limit_are_answered() -> None:
    # The limit leaves room for every real request.
    value = json.loads(nested(protocol.MAX_DEPTH - 3))
    r = reply(json.dumps(request("Echo.say", {"text": value})))
    assert r["result"] == value


@pytest.mark.parametrize(
    "line",
    [
        '{"jsonrpc": "2.0", "method": "Echo.say", "params": ["x"], "id": 1e400}',
        '{"jsonrpc": "2.0", "method": "Echo.say", "params": [-1e400], "id": 1}',
        '{"jsonrpc": "2.0", "method": "Echo.say", "params": [Infinity], "id": 1}',
        '{"jsonrpc": "2.0", "method": "Echo.say", "params": [1' + "0" * 5000 + '], "id": 1}',
        '{"jsonrpc": "2.0", "method": "Echo.say", "id": 1',
        '{"jsonrpc": "2.0", "method": "Echo.say", "id": 1}}',
        "\ufeff{}",
    ],
)
def test_numbers_json_cannot_carry_and_broken_json_are_parse_errors(line: str) -> None:
    r = reply(line)
    assert r["error"]["code"] == -32700
    assert r["id"] is None


def test_empty_batch_is_one_invalid_request() -> None:
    assert reply("[]") == {
        "jsonrpc": "2.0",
        "error": {"code": -32600, "message": "Invalid request", "data": "empty batch"},
        "id": None,
    }


def test_batch_over_the_limit_is_one_invalid_request() -> None:
    batch = [request("Echo.say", ["x"], id=i) for i in range(protocol.MAX_BATCH + 1)]
    r = reply(json.dumps(batch))
    assert r["error"]["code"] == -32600
    assert r["error"]["data"] == (
        f"batch of {protocol.MAX_BATCH + 1} requests exceeds the limit of {protocol.MAX_BATCH}"
    )


def test_batch_at_the_limit_is_answered() -> None:
    batch = [request("Echo.say", [str(i)], id=i) for i in range(protocol.MAX_BATCH)]
    r = reply(json.dumps(batch))
    assert [x["result"] for x in r] == [str(i) for i in range(protocol.MAX_BATCH)]


def test_batch_of_garbage_gets_an_error_per_member() -> None:
    r = reply("[1, 2, 3]")
    assert len(r) == 3
    assert all(x["error"]["code"] == -32600 and x["id"] is None for x in r)


def test_batch_answers_its_valid_members_and_refuses_the_others_in_order() -> None:
    batch = [
        request("Echo.say", ["one"], id=1),
        "garbage",
        [request("Echo.say", ["nested batch"], id=2)],
        {"jsonrpc": "1.0", "method": "Echo.say", "params": ["old"], "id": 3},
        request("Echo.say", ["five"], id=5),
    ]
    r = reply(json.dumps(batch))
    assert [x.get("result") for x in r] == ["one", None, None, None, "five"]
    assert [x["id"] for x in r] == [1, None, None, None, 5]
    assert [x["error"]["code"] for x in r[1:4]] == [-32600] * 3


@pytest.mark.parametrize("ident", ["a", "", 0, -7, 2**63, 1.5, None, "x" * 1000])
def test_any_valid_id_is_echoed(ident: Any) -> None:
    assert reply(json.dumps(request("Echo.say", ["x"], id=ident)))["id"] == ident


@pytest.mark.parametrize("ident", [True, False, [1], {"a": 1}])
def test_id_of_another_type_is_invalid_request(ident: Any) -> None:
    r = reply(json.dumps(request("Echo.say", ["x"], id=ident)))
    assert r["error"] == {
        "code": -32600,
        "message": "Invalid request",
        "data": "id must be a string, a number or null",
    }
    assert r["id"] is None


@pytest.mark.parametrize("params", ['"text"', "7", "true", "null"])
def test_params_that_are_not_structured_are_invalid_request(params: str) -> None:
    line = '{"jsonrpc": "2.0", "method": "Echo.say", "params": ' + params + ', "id": 1}'
    assert reply(line)["error"]["code"] == -32600


@pytest.mark.parametrize("version", ["1.0", "2", 2.0, None])
def test_wrong_jsonrpc_version_is_invalid_request(version: Any) -> None:
    r = reply(json.dumps({"jsonrpc": version, "method": "Echo.say", "params": ["x"], "id": 1}))
    assert r["error"]["data"] == 'jsonrpc must be "2.0"'


def test_notification_to_unknown_method_gets_no_reply() -> None:
    assert reply(json.dumps({"jsonrpc": "2.0", "method": "No.such"})) is None
    assert reply(json.dumps([{"jsonrpc": "2.0", "method": "No.such"}] * 3)) is None
