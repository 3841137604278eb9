"""The one table from domain errors to HTTP statuses.

Handlers raise domain errors; the connection turns them into a response
here. Errors the service did not anticipate become a 500 that says "see the
log" while the log gets the traceback: a 5xx never exposes internals.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import errors as e

# In the table: the status the host daemon answered (HostRefused.status).
HOST_STATUS = 0

# Most specific class first: the first match wins.
STATUS: tuple[tuple[type[e.ImageioError], int], ...] = (
    (e.Forbidden, 403),
    (e.BadRequest, 400),
    (e.InvalidParam, 400),
    (e.NotFound, 404),
    (e.UnsupportedContext, 404),
    (e.MethodNotAllowed, 405),
    (e.LengthRequired, 411),
    (e.PayloadTooLarge, 413),
    (e.UnsupportedMediaType, 415),
    (e.RangeNotSatisfiable, 416),
    (e.HeadersTooLarge, 431),
    (e.TooManyConnections, 503),
    (e.ServiceBusy, 503),
    # The host daemon behind a proxy ticket (backends.http). Its refusals
    # reach the client with the host's own status and message, as if the
    # client had asked the host: a 403 stays 403 and closes, a 416 keeps
    # the host's size, a 503 its retry. A host that cannot be reached,
    # breaks off or answers with a failure of its own is this gateway's
    # failure (RFC 9110 section 15.6.3), one that says nothing for too
    # long a gateway timeout (section 15.6.5).
    (e.HostRefused, HOST_STATUS),
    (e.HostTimeout, 504),
    (e.HostError, 502),
    # RFC 4918 section 11.5, in the IANA registry for any method: the server
    # cannot store what the request needs. Neither a bug ("see the log")
    # nor the client's fault; retrying after space is freed succeeds.
    (e.StorageFull, 507),
    # The storage shrank under a read: a fault of the server's side that
    # the client can neither fix nor retry into success, like any other
    # storage failure. Mostly logged only: the head went out before.
    (e.ImageEnded, 500),
    (e.BackendError, 500),
    # The HTTP ticket API (http.tickets) on the control side.
    (e.InvalidTicket, 400),
    (e.TicketNotFound, 404),
    (e.TicketConflict, 409),
    (e.TicketBusy, 409),
    # A veto is a refusal by policy, not a state to wait out: 409 stays
    # "retry later" for a DELETE (TicketBusy).
    (e.HookFailed, 403),
    # Preparing a volume ticket. A volume that is not there is a ticket
    # naming nothing, like a url without a file (InvalidTicket); a lease
    # held elsewhere is a conflict that may pass; a lockspace not joined
    # is this host unable to serve the domain for now. A failed LVM or
    # qemu-nbd run is ours to fix; its message goes to the caller, who is
    # trusted on this control socket (JSON-RPC puts it in data).
    (e.VolumeNotFound, 400),
    (e.LeaseBusy, 409),
    (e.LockspaceUnavailable, 503),
    (e.VolumeError, 500),
)

# A client that was refused access must reconnect to try again (and cannot
# keep probing ticket ids on one connection); an oversized request was not
# read, so the stream is no longer in sync; a request without length may
# still send a body, which we cannot tell from the next request (RFC 9112
# section 6.3). A refused head closes too (http.connection). A storage
# failure usually cuts a body off half-way: closing is the only state both
# sides agree on.
CLOSES_CONNECTION = frozenset({403, 411, 413, 431, 500, 507})


@dataclass(frozen=True)
class Reply:
    status: int
    message: str
    headers: dict[str, str]
    close: bool


def reply_for(error: Exception) -> Reply | None:
    """The reply for a domain error, or None for an unexpected error."""
    if not isinstance(error, e.ImageioError):
        return None
    for cls, status in STATUS:
        if isinstance(error, cls):
            if status == HOST_STATUS:
                assert isinstance(error, e.HostRefused)
                status = error.status
            return Reply(
                status, error.message, _headers(error, status), status in CLOSES_CONNECTION
            )
    return None


INTERNAL = Reply(500, "Internal server error, see the log", {}, True)


def _headers(error: e.ImageioError, status: int) -> dict[str, str]:
    if isinstance(error, e.RangeNotSatisfiable):
        # RFC 7233 section 4.4: tell the client the current length.
        return {"Content-Range": f"bytes */{error.size}"}
    if isinstance(error, e.HostRefused) and status == 416 and error.size is not None:
        # The host's 416, with the length it has, as ours would tell it.
        return {"Content-Range": f"bytes */{error.size}"}
    if isinstance(error, e.MethodNotAllowed):
        return {"Allow": error.allow}
    if status == 503:
        return {"Retry-After": "1"}
    return {}
