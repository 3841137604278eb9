"""Argument parsing and reporting of ``vdsm-imageio call``, without a server."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from vdsm_imageio import callclient
from vdsm_imageio.callclient import Call, UsageError, parse_args, parse_value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("300", 300),
        ("-1", -1),
        ("1.5", 1.5),
        ("true", True),
        ("null", None),
        ('["read", "write"]', ["read", "write"]),
        ('{"domain": "file"}', {"domain": "file"}),
        ('"123"', "123"),
        ("abc-123", "abc-123"),
        ("", ""),
        ("file:///var/tmp/disk", "file:///var/tmp/disk"),
        ("[unclosed", "[unclosed"),
    ],
)
def test_value_that_parses_as_json_is_json(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_pairs_become_params() -> None:
    call = parse_args(["Ticket.extend", "uuid=abc", "timeout=300"], io.StringIO())
    assert call == Call(
        socket=callclient.DEFAULT_SOCKET,
        method="Ticket.extend",
        params={"uuid": "abc", "timeout": 300},
    )


def test_value_may_contain_equal_sign() -> None:
    call = parse_args(["M", "url=nbd:unix:/s:exportname=a=b"], io.StringIO())
    assert call.params == {"url": "nbd:unix:/s:exportname=a=b"}


def test_socket_option() -> None:
    call = parse_args(["--socket", "ctl.sock", "Ticket.list"], io.StringIO())
    assert call.socket == "ctl.sock"
    assert call.params == {}


@pytest.mark.parametrize("arg", ["timeout", "=300"])
def test_pair_without_name_or_equal_is_usage_error(arg: str) -> None:
    with pytest.raises(UsageError):
        parse_args(["M", arg], io.StringIO())


def test_duplicate_pair_is_usage_error() -> None:
    with pytest.raises(UsageError, match="twice"):
        parse_args(["M", "a=1", "a=2"], io.StringIO())


def test_params_from_file_merged_with_pairs(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"uuid": "a", "timeout": 1}))
    call = parse_args(["-f", str(path), "Ticket.extend", "timeout=5"], io.StringIO())
    assert call.params == {"uuid": "a", "timeout": 5}


def test_params_from_stdin() -> None:
    stdin = io.StringIO(json.dumps({"ticket": {"uuid": "a", "size": 1}}))
    call = parse_args(["-f", "-", "Ticket.add"], stdin)
    assert call.params == {"ticket": {"uuid": "a", "size": 1}}


@pytest.mark.parametrize("content", ["[1, 2]", "{broken"])
def test_params_file_must_be_json_object(tmp_path: Path, content: str) -> None:
    path = tmp_path / "params.json"
    path.write_text(content)
    with pytest.raises(UsageError):
        parse_args(["-f", str(path), "M"], io.StringIO())


def test_missing_method_exits_2() -> None:
    assert callclient.main([], stderr=io.StringIO()) == 2


def test_missing_params_file_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert callclient.main(["-f", str(tmp_path / "nope"), "M"], stderr=err) == 2
    assert "cannot read" in err.getvalue()


def test_request_line_is_one_json_line() -> None:
    line = callclient.request_line(Call("s", "Ticket.status", {"uuid": "a\nb"}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "Ticket.status",
        "params": {"uuid": "a\nb"},
    }


def test_result_printed_as_json() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert callclient.report({"id": 1, "result": {"a": [1]}}, out, err) == 0
    assert json.loads(out.getvalue()) == {"a": [1]}
    assert err.getvalue() == ""


def test_error_printed_on_stderr_with_data() -> None:
    out, err = io.StringIO(), io.StringIO()
    response = {
        "id": 1,
        "error": {"code": -32602, "message": "Invalid size", "data": {"field": "size"}},
    }
    assert callclient.report(response, out, err) == 1
    first, rest = err.getvalue().split("\n", 1)
    assert first == "error -32602: Invalid size"
    assert json.loads(rest) == {"field": "size"}
    assert out.getvalue() == ""


def test_unreachable_socket_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    path = os.path.join(tmp_path, "missing.sock")
    assert callclient.main(["--socket", path, "Ticket.list"], stderr=err) == 2
    assert "cannot call Ticket.list" in err.getvalue()
