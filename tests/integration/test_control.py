"""The control socket end to end: a real ControlServer on a unix socket, a
real Registry, raw newline-delimited JSON and the ``call`` client."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clock import FakeClock
from tests.support.tickets import valid_ticket
from vdsm_imageio import callclient
from vdsm_imageio.registry import Registry
from verbs import create_control, protocol
from verbs.errors import verb
from verbs.server import MAX_LINE, Connection, ControlServer
from verbs.service import ServiceInfo
from verbs.ticket import ticket_methods

IO_TIMEOUT = 10.0


class Client:
    """A raw control-channel client: lines out, lines in."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.next_id = 0

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.sock.sendall(data + b"\n")

    def recv(self) -> Any:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        return json.loads(line)

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        self.send(
            json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        )
        reply = self.recv()
        assert reply["id"] == self.next_id
        return reply

    def result(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method: str, **params: Any) -> Any:
        reply = self.call(method, **params)
        assert "result" not in reply, reply
        return reply["error"]

    def at_eof(self) -> bool:
        return self.reader.readline() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def sock_dir(tmp_path: Path) -> Iterator[str]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer.
    if len(str(tmp_path)) < 80:
        yield str(tmp_path)
        return
    short = tempfile.mkdtemp(prefix="ctl-")
    try:
        yield short
    finally:
        shutil.rmtree(short)


@pytest.fixture
def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "control.sock")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(clock=clock, remove_timeout=0.2, default_inactivity_timeout=60)


INFO = ServiceInfo(
    version="0.1.0",
    features=["extents"],
    data_url="https://x/images/",
    unix_socket=None,
    uptime=5,
    tickets=0,
    connections=0,
)


@pytest.fixture
def server(registry: Registry, sock_path: str) -> Iterator[ControlServer]:
    with create_control(registry, sock_path, lambda: INFO) as srv:
        yield srv


@pytest.fixture
def client(server: ControlServer) -> Iterator[Client]:
    c = Client(server.path)
    yield c
    c.close()


def ticket(**kw: Any) -> dict[str, Any]:
    return valid_ticket(
        **{
            "uuid": "secret-1",
            "size": 4096,
            "ops": ["read", "write"],
            "url": "file:///var/tmp/disk.raw",
            "transfer_id": "tx-1",
            "engine_extra": {"ignored": True},
            **kw,
        }
    )


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


def test_connections_are_independent(server: ControlServer) -> None:
    a, b = Client(server.path), Client(server.path)
    try:
        a.result("Ticket.add", ticket=ticket())
        assert b.result("Ticket.status", uuid="secret-1")["transfer_id"] == "tx-1"
    finally:
        a.close()
        b.close()


def test_socket_mode_and_cleanup(registry: Registry, sock_path: str) -> None:
    srv = create_control(registry, sock_path, lambda: INFO, mode=0o600)
    srv.start()
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        srv.stop()
    assert not os.path.exists(sock_path)


def test_start_replaces_stale_socket(registry: Registry, sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # a daemon that died left its socket file
    with create_control(registry, sock_path, lambda: INFO) as srv:
        c = Client(srv.path)
        assert c.result("Ticket.list") == []
        c.close()


def test_start_refuses_live_socket(server: ControlServer, registry: Registry) -> None:
    other = create_control(registry, server.path, lambda: INFO)
    with pytest.raises(OSError, match="Another service"):
        other.start()
    c = Client(server.path)
    assert c.result("Ticket.list") == []
    c.close()


def test_start_refuses_to_replace_regular_file(
    registry: Registry,
    sock_path: str,
) -> None:
    Path(sock_path).write_text("not a socket")
    with pytest.raises(FileExistsError):
        create_control(registry, sock_path, lambda: INFO).start()
    assert Path(sock_path).read_text() == "not a socket"


def test_stop_closes_open_connections(registry: Registry, sock_path: str) -> None:
    srv = create_control(registry, sock_path, lambda: INFO)
    srv.start()
    c = Client(srv.path)
    try:
        assert c.result("Ticket.list") == []
        srv.stop()
        assert c.at_eof()
        assert srv.connections() == 0
    finally:
        c.close()


def test_connection_limit(registry: Registry, sock_path: str) -> None:
    with ControlServer(sock_path, ticket_methods(registry), max_connections=1) as srv:
        first = Client(srv.path)
        first.result("Ticket.list")
        second = Client(srv.path)
        try:
            assert second.at_eof()
            assert first.result("Ticket.list") == []
        finally:
            first.close()
            second.close()


class Subscriptions:
    """A stand-in Events namespace: remembers connections, tracks closes."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.closed = threading.Event()

    def subscribe(self, conn: Connection) -> bool:
        self.conns.append(conn)
        conn.on_close(lambda c: self.closed.set())
        return True


@pytest.fixture
def events_server(
    registry: Registry, sock_path: str
) -> Iterator[tuple[ControlServer, Subscriptions]]:
    subs = Subscriptions()
    methods = {
        **ticket_methods(registry),
        "Events.subscribe": verb(subs.subscribe, pass_connection=True),
    }
    with ControlServer(sock_path, methods) as srv:
        yield srv, subs


def test_notifications_never_interleave_with_replies(
    events_server: tuple[ControlServer, Subscriptions],
) -> None:
    srv, subs = events_server
    c = Client(srv.path)
    try:
        assert c.result("Events.subscribe") is True
        (conn,) = subs.conns
        big = {"payload": "n" * 200_000}
        count = 50

        def push() -> None:
            for i in range(count):
                conn.notify("Test.tick", {"i": i, **big})

        pusher = threading.Thread(target=push)
        pusher.start()
        lines: list[Any] = []
        for i in range(count):
            c.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": "Ticket.list"}))
        while len(lines) < 2 * count:
            lines.append(c.recv())  # each line is one whole JSON text
        pusher.join(IO_TIMEOUT)
        ticks = [m["params"]["i"] for m in lines if m.get("method") == "Test.tick"]
        ids = [m["id"] for m in lines if "id" in m]
        assert ticks == list(range(count))
        assert ids == list(range(count))
    finally:
        c.close()


def test_close_runs_callbacks_and_notify_fails(
    events_server: tuple[ControlServer, Subscriptions],
) -> None:
    srv, subs = events_server
    c = Client(srv.path)
    assert c.result("Events.subscribe") is True
    c.close()
    assert subs.closed.wait(IO_TIMEOUT)
    assert subs.conns[0].notify("Test.tick", {}) is False


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


def test_peer_that_stops_reading_is_dropped(
    events_server: tuple[ControlServer, Subscriptions],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("verbs.connection.SEND_TIMEOUT", 0.5)
    srv, subs = events_server
    c = Client(srv.path)
    try:
        assert c.result("Events.subscribe") is True
        (conn,) = subs.conns
        payload = {"fill": "x" * 65536}
        # The socket buffers hold a few hundred KiB; then sends time out.
        sent = [conn.notify("Test.fill", payload) for _ in range(64)]
        assert sent[0] is True
        assert sent[-1] is False
        assert subs.closed.wait(IO_TIMEOUT)
    finally:
        c.close()
