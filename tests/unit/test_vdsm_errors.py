"""vdsm's error table for the Host verbs (verbs.vdsm_errors), without sockets."""

from __future__ import annotations

import pytest

from vdsm_imageio import errors
from vdsm_imageio.http.errors import reply_for
from vdsm_imageio.http.response import REASONS
from verbs import vdsm_errors

SAMPLES = [
    errors.InvalidTicket(field="size", reason="is required"),
    errors.InvalidParam(field="timeout", reason="must be an integer, got '300'"),
    errors.TicketNotFound(uuid="nope"),
    errors.TicketConflict(uuid="of transfer t", field="uuid"),
    errors.TicketBusy(uuid="of transfer t", running=2, timeout=60),
    errors.HookFailed(hook="50-deny", event="before_ticket_add", outcome="exit code 1", status=1),
    errors.VolumeNotFound(sd_id="sd", img_id="img", vol_id="vol"),
    errors.LeaseBusy(sd_id="sd", vol_id="vol"),
    errors.LockspaceUnavailable(sd_id="sd", reason="not joined"),
    errors.VolumeError(action="prepare", sd_id="sd", vol_id="vol", reason="lvchange failed"),
]


class VdsmImageDaemonError(Exception):
    """The str() of vdsm's ImageDaemonError, rebuilt from its definition:
    GeneralException formats msg + ": " + repr(value), and ImageDaemonError
    sets value to "status={}, reason={}, error={}"."""

    msg = "Image daemon request failed"

    def __init__(self, status: int, reason: str, error_info: str) -> None:
        self.value = f"status={status}, reason={reason}, error={error_info}"

    def __str__(self) -> str:
        return f"{self.msg}: {self.value!r}"


@pytest.mark.parametrize("exc", SAMPLES, ids=lambda e: type(e).__name__)
def test_failure_is_what_vdsm_relays_from_the_ticket_api(exc: errors.ImageioError) -> None:
    # What the HTTP ticket API answers for the same failure...
    reply = reply_for(exc)
    assert reply is not None
    body = reply.message + "\n"
    # ...is what vdsm turns into an ImageDaemonError.
    error = vdsm_errors.translate(exc)
    assert error.code == 482
    assert error.message == str(VdsmImageDaemonError(reply.status, REASONS[reply.status], body))
    assert error.data is None
    assert not error.unexpected


def test_table_covers_every_failure_of_the_host_verbs() -> None:
    assert set(vdsm_errors.HTTP_STATUS) == {type(e) for e in SAMPLES}


@pytest.mark.parametrize("status", sorted(set(vdsm_errors.HTTP_STATUS.values()) | {500}))
def test_reason_is_the_phrase_the_ticket_api_sends(status: int) -> None:
    assert vdsm_errors.image_daemon_error(status, "x").startswith(
        f"Image daemon request failed: 'status={status}, reason={REASONS[status]}, error=x"
    )


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.TicketRemoving(uuid="of transfer t"), 409),
        (errors.DomainNotFound(sd_id="sd", reason="no such directory"), 400),
        (errors.ImageNotFound(sd_id="sd", img_id="img", reason="no such directory"), 400),
    ],
)
def test_subclass_takes_its_parents_status(exc: errors.ImageioError, status: int) -> None:
    assert vdsm_errors.status_of(exc) == status
    reply = reply_for(exc)
    assert reply is not None and reply.status == status


def test_message_quotes_as_python_repr_does() -> None:
    # repr() picks double quotes when the text holds a single quote, and
    # shows the body's newline as \n: vdsm's message is exactly that.
    message = vdsm_errors.translate(
        errors.InvalidTicket(field="size", reason="is required")
    ).message
    assert message == (
        "Image daemon request failed: "
        "\"status=400, reason=Bad Request, error=Invalid ticket field 'size': is required\\n\""
    )
    plain = vdsm_errors.translate(errors.TicketNotFound(uuid="u-1")).message
    assert plain == (
        "Image daemon request failed: 'status=404, reason=Not Found, error=No such ticket: u-1\\n'"
    )


@pytest.mark.parametrize(
    "exc", [RuntimeError("secret internals"), errors.Forbidden(reason="a data-path error")]
)
def test_unexpected_error_is_500_see_the_log(exc: Exception) -> None:
    error = vdsm_errors.translate(exc)
    assert error.code == 482
    assert error.unexpected
    assert error.message == (
        "Image daemon request failed: 'status=500, reason=Internal Server Error, "
        "error=Internal server error, see the log\\n'"
    )
