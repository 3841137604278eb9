"""The control socket end to end, one request at a time: a real ControlServer
on a unix socket, a real Registry, raw newline-delimited JSON and the
``call`` client."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.integration.control.rawcontrol import INFO, Client, ticket
from tests.support.clock import FakeClock
from vdsm_imageio import callclient
from vdsm_imageio.registry import Registry
from verbs import protocol
from verbs.server import MAX_LINE, ControlServer


def test_ticket_round_trip(client: Client, clock: FakeClock) -> None:
    added = client.result("Ticket.add", ticket=ticket())
    assert added["transfer_id"] == "tx-1"
    assert added["ops"] == ["read", "write"]

    clock.now += 100
    status = client.result("Ticket.status", uuid="secret-1")
    assert status["expires_in"] == 200
    assert status["idle_time"] == 100
    assert isinstance(status["timeout"], int)

    extended = client.result("Ticket.extend", uuid="secret-1", timeout=600)
    assert extended["timeout"] == 600
    assert extended["expires_in"] == 600

    assert [s["uuid"] for s in client.result("Ticket.list")] == ["secret-1"]
    assert client.result("Ticket.remove", uuid="secret-1") is True
    assert client.result("Ticket.list") == []
    assert client.error("Ticket.status", uuid="secret-1")["code"] == 100


def test_batch_gets_batch_reply(client: Client) -> None:
    client.send(
        json.dumps(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "Ticket.add", "params": {"ticket": ticket()}},
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "Ticket.status",
                    "params": {"uuid": "secret-1"},
                },
                {"jsonrpc": "2.0", "id": 3, "method": "Ticket.status", "params": {"uuid": "x"}},
            ]
        )
    )
    replies = client.recv()
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert replies[1]["result"]["transfer_id"] == "tx-1"
    assert replies[2]["error"]["code"] == 100


def test_notification_gets_no_reply(client: Client, registry: Registry) -> None:
    client.send(
        json.dumps({"jsonrpc": "2.0", "method": "Ticket.add", "params": {"ticket": ticket()}})
    )
    # The next line on the wire answers the next request, not the notification.
    assert client.call("Ticket.list")["result"][0]["uuid"] == "secret-1"
    assert len(registry.list()) == 1


def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    lines = []
    for i in range(20):
        t = ticket(uuid=f"secret-{i}", transfer_id=f"tx-{i}")
        lines.append(
            json.dumps({"jsonrpc": "2.0", "id": i, "method": "Ticket.add", "params": {"ticket": t}})
        )
    client.sock.sendall("\n".join(lines).encode() + b"\n")
    replies = [client.recv() for _ in range(20)]
    assert [r["id"] for r in replies] == list(range(20))
    transfers = [r["result"]["transfer_id"] for r in replies]
    assert transfers == [f"tx-{i}" for i in range(20)]


def test_garbage_is_parse_error_and_connection_survives(client: Client) -> None:
    client.send("this is not json")
    reply = client.recv()
    assert reply["error"]["code"] == -32700
    assert reply["id"] is None
    assert client.result("Ticket.list") == []


def test_non_request_json_is_invalid_request(client: Client) -> None:
    client.send('{"method": "Ticket.list"}')
    assert client.recv()["error"]["code"] == -32600


def test_ticket_without_size_names_size(client: Client) -> None:
    t = ticket()
    del t["size"]
    error = client.error("Ticket.add", ticket=t)
    assert error["code"] == -32602
    assert error["data"] == {"field": "size", "reason": "is required"}


def test_unknown_method(client: Client) -> None:
    assert client.error("Ticket.frobnicate")["code"] == -32601


def test_missing_param(client: Client) -> None:
    error = client.error("Ticket.extend", uuid="secret-1")
    assert error["code"] == -32602
    assert error["data"]["field"] == "timeout"


def test_status_of_unknown_ticket_is_100(client: Client) -> None:
    error = client.error("Ticket.status", uuid="no-such-uuid")
    assert error["code"] == 100
    assert error["message"] == "No such ticket: no-such-uuid"


def test_remove_of_unknown_ticket_is_true(client: Client) -> None:
    assert client.result("Ticket.remove", uuid="no-such-uuid") is True


def test_remove_with_running_operation_is_busy(
    client: Client,
    registry: Registry,
) -> None:
    client.result("Ticket.add", ticket=ticket())
    with registry.get("secret-1").operation(0, 4096):
        error = client.error("Ticket.remove", uuid="secret-1")
        assert error["code"] == 102
        assert error["data"]["running"] == 1
        assert client.result("Ticket.status", uuid="secret-1")["canceled"] is True
    # The engine retries once the request ended.
    assert client.result("Ticket.remove", uuid="secret-1") is True
    assert client.result("Ticket.list") == []


def test_service_info(client: Client) -> None:
    assert client.result("Service.info") == INFO.to_json()


def test_too_long_line_is_refused_and_the_next_line_is_served(client: Client) -> None:
    data = b'{"jsonrpc": "2.0", "id": 1, "method": "' + b"x" * (MAX_LINE + 1) + b'"}\n'
    client.sock.sendall(data)
    reply = client.recv()
    assert reply["error"]["code"] == -32600
    assert reply["id"] is None
    # The rest of the refused line was dropped, not parsed as a request.
    assert client.result("Ticket.list") == []


def test_too_long_line_is_refused_before_its_end_arrives(client: Client) -> None:
    # Several times the limit and no newline yet: the error comes anyway,
    # and the server keeps reading (and dropping) what follows.
    client.sock.sendall(b"[" * (3 * MAX_LINE))
    assert client.recv()["error"]["code"] == -32600
    client.sock.sendall(b"x" * MAX_LINE + b"\n")
    assert client.result("Ticket.list") == []


def test_line_at_the_limit_is_served(client: Client) -> None:
    line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "Ticket.status", "params": {}})
    padded = line[:-1] + " " * (MAX_LINE - len(line)) + "}"
    assert len(padded) == MAX_LINE
    client.send(padded)
    assert client.recv()["error"] == {
        "code": -32602,
        "message": "Invalid parameter 'uuid': is required",
        "data": {"field": "uuid", "reason": "is required"},
    }


def test_bug_in_the_wire_code_fails_one_request_not_the_connection(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    respond = protocol.respond

    def broken(line: bytes, methods: Any, context: Any) -> str | None:
        if b"Ticket.status" in line:
            raise KeyError("a bug")
        return respond(line, methods, context)

    monkeypatch.setattr(protocol, "respond", broken)
    client.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "Ticket.status"}))
    assert client.recv() == {
        "jsonrpc": "2.0",
        "error": {"code": -32603, "message": "Internal error, see the log"},
        "id": None,
    }
    assert client.result("Ticket.list") == []


def run_call(argv: list[str], stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = callclient.main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_call_client_round_trip(server: ControlServer) -> None:
    sock = ["--socket", server.path]
    rc, out, err = run_call(
        [*sock, "-f", "-", "Ticket.add"], stdin=json.dumps({"ticket": ticket()})
    )
    assert (rc, err) == (0, "")
    assert json.loads(out)["transfer_id"] == "tx-1"

    rc, out, _ = run_call([*sock, "Ticket.extend", "uuid=secret-1", "timeout=900"])
    assert rc == 0
    assert json.loads(out)["timeout"] == 900

    rc, out, _ = run_call([*sock, "Ticket.remove", "uuid=secret-1"])
    assert (rc, json.loads(out)) == (0, True)


def test_call_client_sends_json_values(server: ControlServer) -> None:
    rc, out, err = run_call(
        [
            "--socket",
            server.path,
            "Ticket.add",
            'ticket={"uuid": "u", "size": 1, "ops": ["read"], "timeout": 30,'
            ' "url": "file:///var/tmp/x"}',
        ]
    )
    assert (rc, err) == (0, "")
    assert json.loads(out)["ops"] == ["read"]


def test_call_client_error_exits_1(server: ControlServer) -> None:
    rc, out, err = run_call(["--socket", server.path, "Ticket.status", "uuid=nope"])
    assert rc == 1
    assert out == ""
    assert err.startswith("error 100: No such ticket: nope\n")


def test_call_client_invalid_param_shows_field(server: ControlServer) -> None:
    rc, _, err = run_call(["--socket", server.path, "Ticket.extend", "uuid=u", "timeout=soon"])
    assert rc == 1
    assert err.startswith("error -32602: ")
    assert '"field": "timeout"' in err
