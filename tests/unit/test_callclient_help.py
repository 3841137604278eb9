"""``vdsm-imageio call --help`` and ``--subscribe``, without a daemon.

The verb table of ``--help`` is a copy kept as data in callclient (help
works while the service is down; vdsm_imageio never imports verbs): these
tests hold it equal to what the control plane registers.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vdsm_imageio import callclient
from vdsm_imageio.callclient import Call, UsageError, parse_args
from vdsm_imageio.registry import Registry
from verbs import create_control
from verbs.events import EVENTS, EventVerbs
from verbs.host import HostVerbs
from verbs.service import ServiceVerbs
from verbs.ticket import TicketVerbs

NAMESPACES: dict[str, type] = {
    "Ticket": TicketVerbs,
    "Host": HostVerbs,
    "Service": ServiceVerbs,
    "Events": EventVerbs,
}
# Verbs that get the connection as their first argument, not as a param.
WITH_CONNECTION = {"Events.subscribe"}


def registered_methods() -> set[str]:
    registry = Registry(clock=lambda: 0.0, remove_timeout=1.0, default_inactivity_timeout=60)
    control = create_control(registry, "unused.sock", lambda: {})
    return set(control._methods)


def signature_params(method: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    namespace, name = method.split(".")
    fn = getattr(NAMESPACES[namespace], name)
    params = list(inspect.signature(fn).parameters.values())[1:]  # self
    if method in WITH_CONNECTION:
        params = params[1:]
    required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
    optional = tuple(p.name for p in params if p.default is not inspect.Parameter.empty)
    return required, optional


def test_help_table_lists_every_registered_method() -> None:
    assert {v.method for v in callclient.VERBS} == registered_methods()


@pytest.mark.parametrize("verb", callclient.VERBS, ids=lambda v: v.method)
def test_help_table_params_match_the_signature(verb: callclient.Verb) -> None:
    assert (verb.params, verb.optional) == signature_params(verb.method)


def test_help_table_lists_every_event() -> None:
    assert tuple(name for name, _ in callclient.EVENTS) == EVENTS


def test_help_prints_verbs_with_params_and_events() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert callclient.main(["--help"]) == 0
    text = out.getvalue()
    assert "Ticket.extend uuid timeout" in text
    assert "Host.add_image_ticket ticket" in text
    assert "Events.subscribe [events]" in text
    assert "--subscribe [EVENT ...]" in text
    for name in EVENTS:
        assert name in text


def test_subscribe_to_everything() -> None:
    call = parse_args(["--socket", "s", "--subscribe"], io.StringIO())
    assert call == Call(socket="s", method="Events.subscribe", params={}, stream=True)


def test_subscribe_to_named_events() -> None:
    call = parse_args(["--subscribe", "Ticket.progress", "Ticket.removed"], io.StringIO())
    assert call.params == {"events": ["Ticket.progress", "Ticket.removed"]}
    assert call.stream


@pytest.mark.parametrize(
    "argv",
    [
        ["Ticket.list", "--subscribe"],
        ["-f", "-", "--subscribe"],
    ],
)
def test_subscribe_with_method_or_params_is_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv, io.StringIO("{}"))


def test_method_is_required_without_subscribe() -> None:
    err = io.StringIO()
    assert callclient.main(["--socket", "s"], stderr=err) == 2
    assert "METHOD is required" in err.getvalue()


# --subscribe against a scripted peer on a real unix socket.


@pytest.fixture
def sock_path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="vdsm-call-")
    path = os.path.join(d, "control.sock")
    yield path
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(d)


def serve_once(path: str, script: Callable[[socket.socket, bytes], None]) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                script(conn, reader.readline())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def note(method: str, **params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode() + b"\n"


def test_subscribe_prints_notifications_until_the_service_closes(sock_path: str) -> None:
    requests: list[Any] = []

    def script(conn: socket.socket, request: bytes) -> None:
        requests.append(json.loads(request))
        conn.sendall(note("Ticket.removed", uuid="u0", transfer_id="t0"))  # before the reply
        conn.sendall(b'{"jsonrpc": "2.0", "id": 1, "result": true}\n')
        conn.sendall(note("Ticket.progress", uuid="u1", transferred=5))

    t = serve_once(sock_path, script)
    out, err = io.StringIO(), io.StringIO()
    rc = callclient.main(
        ["--socket", sock_path, "--subscribe", "Ticket.removed", "Ticket.progress"],
        stdout=out,
        stderr=err,
    )
    t.join(5)
    assert requests[0]["method"] == "Events.subscribe"
    assert requests[0]["params"] == {"events": ["Ticket.removed", "Ticket.progress"]}
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m["method"] for m in lines] == ["Ticket.removed", "Ticket.progress"]
    assert lines[1]["params"] == {"uuid": "u1", "transferred": 5}
    # The service going away ends the subscription with an error.
    assert rc == 2
    assert "closed the connection" in err.getvalue()


def test_subscribe_error_reply_exits_1(sock_path: str) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "error": {
                        "code": -32602,
                        "message": "Invalid parameter 'events'",
                        "data": {"field": "events", "reason": "unknown"},
                    },
                }
            ).encode()
            + b"\n"
        )

    t = serve_once(sock_path, script)
    out, err = io.StringIO(), io.StringIO()
    rc = callclient.main(["--socket", sock_path, "--subscribe", "Nope"], stdout=out, stderr=err)
    t.join(5)
    assert rc == 1
    assert "error -32602" in err.getvalue()
    assert out.getvalue() == ""
