"""The error-code table and the verb wrapper, without sockets."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from jsonrpcserver import dispatch_to_serializable

from vdsm_imageio import errors
from verbs.errors import CODES, translate, verb

EXPECTED_CODES = [
    (errors.InvalidTicket(field="size", reason="is required"), -32602),
    (errors.InvalidParam(field="timeout", reason="must be an integer"), -32602),
    (errors.TicketNotFound(uuid="u"), 100),
    (errors.TicketConflict(uuid="u", field="size"), 101),
    (errors.TicketBusy(uuid="u", running=1, timeout=0.5), 102),
    (errors.VolumeNotFound(sd_id="sd", img_id="img", vol_id="vol"), 200),
    (errors.VolumeError(action="prepare", sd_id="sd", vol_id="vol", reason="lvchange failed"), 201),
    (errors.LeaseBusy(sd_id="sd", vol_id="vol"), 202),
    (errors.LockspaceUnavailable(sd_id="sd", reason="not joined"), 203),
    (
        errors.HookFailed(
            hook="veto", event="before_ticket_add", status=1, outcome="exit code 1", stderr="no"
        ),
        300,
    ),
]


@pytest.mark.parametrize(
    ("exc", "code"), EXPECTED_CODES, ids=[type(e).__name__ for e, _ in EXPECTED_CODES]
)
def test_domain_error_maps_to_its_code(exc: errors.ImageioError, code: int) -> None:
    error = translate(exc)
    assert error.code == code
    assert error.message == exc.message


def test_table_covers_every_control_error() -> None:
    assert set(CODES) == {type(e) for e, _ in EXPECTED_CODES}


def test_invalid_ticket_data_names_field_and_reason() -> None:
    error = translate(errors.InvalidTicket(field="size", reason="is required"))
    assert error.data == {"field": "size", "reason": "is required"}


def test_volume_error_data_carries_tool_message() -> None:
    error = translate(
        errors.VolumeError(
            action="prepare", sd_id="sd", vol_id="vol", reason="  Volume group not found"
        )
    )
    assert error.data["reason"] == "  Volume group not found"


def test_hook_failed_data_carries_stderr() -> None:
    error = translate(
        errors.HookFailed(
            hook="10-veto",
            event="before_ticket_add",
            status=3,
            outcome="exit code 3",
            stderr="quota\n",
        )
    )
    assert error.data["stderr"] == "quota\n"
    assert "10-veto" in error.message


def test_subclass_of_mapped_error_uses_parent_code() -> None:
    class Gone(errors.TicketNotFound):
        pass

    assert translate(Gone(uuid="u")).code == 100


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("secret internals"),
        errors.Forbidden(reason="not a control error"),
    ],
)
def test_unmapped_error_is_internal_and_hides_message(exc: Exception) -> None:
    error = translate(exc)
    assert error.code == -32603
    assert error.message == "Internal error, see the log"
    assert error.data is None


def call(methods: dict[str, Any], method: str, params: Any = None) -> Any:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        request["params"] = params
    return dispatch_to_serializable(json.dumps(request), methods, context="conn")


def test_verb_returns_result() -> None:
    methods = {"M.add": verb(lambda a, b: a + b)}
    assert call(methods, "M.add", {"a": 1, "b": 2})["result"] == 3


def test_verb_accepts_positional_params() -> None:
    methods = {"M.add": verb(lambda a, b: a + b)}
    assert call(methods, "M.add", [1, 2])["result"] == 3


def test_verb_missing_param_names_it() -> None:
    methods = {"M.add": verb(lambda a, b: a + b)}
    error = call(methods, "M.add", {"a": 1})["error"]
    assert error["code"] == -32602
    assert error["data"] == {"field": "b", "reason": "is required"}


def test_verb_unknown_param_names_it() -> None:
    methods = {"M.add": verb(lambda a, b=0: a + b)}
    error = call(methods, "M.add", {"a": 1, "c": 2})["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "c"


def test_verb_too_many_positional_params() -> None:
    methods = {"M.one": verb(lambda a: a)}
    error = call(methods, "M.one", [1, 2])["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "params"


def test_verb_without_params_takes_none() -> None:
    methods = {"M.list": verb(lambda: [1])}
    assert call(methods, "M.list")["result"] == [1]


def test_verb_maps_domain_error() -> None:
    def status(uuid: str) -> None:
        raise errors.TicketNotFound(uuid=uuid)

    error = call({"T.status": verb(status)}, "T.status", {"uuid": "x"})["error"]
    assert error == {"code": 100, "message": "No such ticket: x", "data": {"uuid": "x"}}


def test_verb_unexpected_error_is_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> None:
        raise KeyError("internal detail")

    with caplog.at_level(logging.ERROR, logger="verbs.errors"):
        error = call({"X.broken": verb(broken, name="X.broken")}, "X.broken")["error"]
    assert error == {"code": -32603, "message": "Internal error, see the log"}
    (record,) = caplog.records
    assert "verb=X.broken" in record.getMessage()
    assert record.exc_info is not None


def test_verb_with_connection_gets_context_not_a_param() -> None:
    seen = []

    def subscribe(conn: Any, events: Any = None) -> bool:
        seen.append((conn, events))
        return True

    methods = {"E.sub": verb(subscribe, pass_connection=True)}
    assert call(methods, "E.sub", {"events": ["a"]})["result"] is True
    assert seen == [("conn", ["a"])]
    error = call(methods, "E.sub", {"conn": "forged"})["error"]
    assert error["data"]["field"] == "conn"
