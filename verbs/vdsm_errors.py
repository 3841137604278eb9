"""vdsm's error codes, for the verbs that carry vdsm's names.

vdsm answers ``Host.*_image_ticket`` by calling ovirt-imageio's HTTP ticket
API (lib/vdsm/storage/imagetickets.py) and reports its failures with its
storage exceptions (lib/vdsm/storage/exception.py), which the engine's
error table reads:

- 482 ImageDaemonError "Image daemon request failed", for any reply of
  status 300 or more: the message is vdsm's GeneralException form,
  ``msg + ": " + repr(value)``, with the value
  ``status={status}, reason={reason}, error={body}``, the body being the
  daemon's text (ours ends with a newline, as ovirt-imageio's does);
- 481 ImageTicketsError "Cannot communicate with image daemon", when the
  request cannot be sent or its reply read;
- 483 ImageDaemonUnsupported, when the daemon's socket does not exist.

The ``Host`` verbs reach the registry in this process, so 481 and 483
never happen here: there is no socket to miss and no transport to break.
Every failure is a 482 carrying the status, reason and body that vdsm
would have relayed from the HTTP ticket API for the same failure
(``vdsm_imageio.http.tickets``, whose statuses are ovirt-imageio's for the
failures ovirt-imageio knows). A test holds ``HTTP_STATUS`` equal to that
API's table (``vdsm_imageio.http.errors``).

An unexpected error is a 482 with status 500 and "see the log", as the
HTTP API answers it, and the traceback goes to the log. Params that do not
bind to the verb (missing or unknown names) stay -32602: vdsm's JSON-RPC
bridge refuses those before any request to the daemon.
"""

from __future__ import annotations

from http import HTTPStatus

from vdsm_imageio import errors

from .errors import RpcError

# lib/vdsm/storage/exception.py
IMAGE_TICKETS_ERROR = 481
IMAGE_DAEMON_ERROR = 482
IMAGE_DAEMON_UNSUPPORTED = 483
IMAGE_DAEMON_ERROR_MESSAGE = "Image daemon request failed"

# The status of the HTTP ticket API's reply to each failure; the nearest
# class of an error decides.
HTTP_STATUS: dict[type[errors.ImageioError], int] = {
    errors.InvalidTicket: 400,
    errors.InvalidParam: 400,
    errors.TicketNotFound: 404,
    errors.TicketConflict: 409,
    errors.TicketBusy: 409,
    errors.HookFailed: 403,
    errors.VolumeNotFound: 400,
    errors.LeaseBusy: 409,
    errors.LockspaceUnavailable: 503,
    errors.VolumeError: 500,
}
INTERNAL_MESSAGE = "Internal server error, see the log"


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of exc's nearest class in the table, None if not mapped."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return None


def image_daemon_error(status: int, body: str) -> str:
    """vdsm's message of an ImageDaemonError for a reply of status and body."""
    # The reason phrase http.client reads: the one both daemons send.
    value = f"status={status}, reason={HTTPStatus(status).phrase}, error={body}"
    return f"{IMAGE_DAEMON_ERROR_MESSAGE}: {value!r}"


def translate(exc: Exception) -> RpcError:
    """The error vdsm would send for exc, unexpected=True for a bug."""
    status = status_of(exc)
    if status is None or not isinstance(exc, errors.ImageioError):
        message = image_daemon_error(500, INTERNAL_MESSAGE + "\n")
        return RpcError(IMAGE_DAEMON_ERROR, message, unexpected=True)
    return RpcError(IMAGE_DAEMON_ERROR, image_daemon_error(status, exc.message + "\n"))
