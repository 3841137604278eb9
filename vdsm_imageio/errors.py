"""Domain errors of the service.

Each error names who is at fault in its class name and carries structured
fields; the message is rendered from a template so the text stays uniform.
The HTTP edge (``vdsm_imageio.http.errors``) and the JSON-RPC edge
(``verbs.errors``) each map these classes to their status or code in one
table; nothing else builds a status from a domain error.
"""

from __future__ import annotations

from typing import Any


class ImageioError(Exception):
    """Base of all domain errors."""

    template = "internal error"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(self.template.format(**fields))

    @property
    def message(self) -> str:
        return str(self)


# Caused by the caller of the control channel.


class InvalidTicket(ImageioError):
    template = "Invalid ticket field {field!r}: {reason}"

    @property
    def field(self) -> str:
        return str(self.fields["field"])


class InvalidParam(ImageioError):
    template = "Invalid parameter {field!r}: {reason}"

    @property
    def field(self) -> str:
        return str(self.fields["field"])


class TicketNotFound(ImageioError):
    template = "No such ticket: {uuid}"


class TicketConflict(ImageioError):
    template = "Ticket {uuid} exists with different content (field {field!r})"


class TicketRemoving(TicketConflict):
    """The ticket was canceled: its removal was agreed, maybe still under way."""

    template = "Ticket {uuid} is being removed; add it again once the removal is done"


class TicketBusy(ImageioError):
    template = (
        "Ticket {uuid} still has {running} running requests after "
        "{timeout} seconds; retry the removal"
    )


# Caused by the data client: the request is not allowed.


class Forbidden(ImageioError):
    """The request is not authorized by any live ticket."""

    template = "{reason}"


class TicketCanceled(Forbidden):
    template = "Transfer {transfer_id} was canceled"


class StorageReadOnly(Forbidden):
    """The backend was opened for reading only; the write never reached it."""

    template = "Storage of this transfer is read-only; cannot {op}"


# Caused by the data client: the request is malformed.


class BadRequest(ImageioError):
    template = "Invalid {field}: {reason}"


class NotFound(ImageioError):
    template = "{reason}"


class MethodNotAllowed(ImageioError):
    template = "Method {method} is not allowed on {path}"


class RangeNotSatisfiable(ImageioError):
    template = "Requested range is outside the image (size {size})"


class PayloadTooLarge(ImageioError):
    template = "Request body of {length} bytes exceeds the limit of {limit} bytes"


class HeadersTooLarge(ImageioError):
    template = "{reason}"


class LengthRequired(ImageioError):
    template = "Content-Length or chunked Transfer-Encoding is required"


class UnsupportedMediaType(ImageioError):
    template = "{reason}"


class UnsupportedContext(ImageioError):
    """Extents were asked for a context this backend cannot report."""

    template = "No {context!r} extents: {reason}"


# Caused by load: try again later.


class TooManyConnections(ImageioError):
    template = (
        "Too many {kind} connections for transfer {transfer_id} "
        "(limit {limit}); retry when one closes"
    )


class ServiceBusy(ImageioError):
    template = "Service has {limit} open connections; retry later"


# Caused by the storage or the peer.


class BackendError(ImageioError):
    template = "Storage I/O failed: {reason}"


class StorageFull(BackendError):
    """No space left on the storage (ENOSPC) or the quota is used up (EDQUOT).

    Not a bug of ours and not the client's fault: the administrator must
    free or add space, then the client retries. On a block device ENOSPC
    also means the range ends past the device.
    """

    template = "Not enough space on the storage: {reason}"


class ImageEnded(BackendError):
    """The image is shorter than a range being read: it shrank under the
    transfer (a file truncated), or a reader stopped early. The storage's
    fault, not the client's; the reply's head is usually sent already."""

    template = "Image ended at offset {offset}, before the end of the range at {end}"


class PeerClosed(ImageioError):
    template = "Client closed the connection: {reason}"


# Caused by the host daemon behind a proxy ticket (backends.http). Each is a
# storage failure for the request (a BackendError), and names who failed in
# its class: the host could not be reached, went away, took too long, or
# refused the request. ``host`` is "address:port" or "unix socket", never
# the URL: its path holds the host's ticket id.


class HostError(BackendError):
    template = "Host daemon at {host} failed: {reason}"

    def __init__(self, *, host: str, reason: str, **fields: Any) -> None:
        super().__init__(host=host, reason=reason, **fields)


class HostUnreachable(HostError):
    """No connection: refused, no route, name not found, TLS refused."""

    template = "Cannot reach the host daemon at {host}: {reason}"


class HostUntrusted(HostUnreachable):
    """The host's certificate does not verify against [backend_http] ca_file."""

    template = "Host daemon at {host} is not trusted: {reason}"


class HostGone(HostError):
    """The host closed or broke the connection, or sent what is not HTTP."""

    template = "Host daemon at {host} closed the connection: {reason}"


class HostTimeout(HostError):
    template = "Host daemon at {host} did not answer within {timeout:g} seconds"

    def __init__(self, *, host: str, timeout: float) -> None:
        super().__init__(host=host, reason="timed out", timeout=timeout)


class HostRefused(HostError):
    """The host answered the request with an error status; the client gets
    that status (``http.errors``) and the host's one-line message."""

    template = "Host daemon at {host}: {reason}"

    def __init__(self, *, host: str, status: int, reason: str, size: int | None = None) -> None:
        super().__init__(host=host, reason=reason, status=status, size=size)

    @property
    def status(self) -> int:
        return int(self.fields["status"])


class HostForbidden(HostRefused):
    """403 from the host: its ticket is missing, expired, canceled or does
    not allow the request. The client's connection closes, as for ours."""


# Caused by the storage plane or a hook: the control request cannot proceed.


class VolumeNotFound(ImageioError):
    template = "Volume {vol_id} of image {img_id} not found in domain {sd_id}"


class VolumeError(ImageioError):
    """Prepare or teardown failed; ``reason`` carries the tool's message."""

    template = "Cannot {action} volume {vol_id} of domain {sd_id}: {reason}"


class LeaseBusy(ImageioError):
    template = "Lease of volume {vol_id} in domain {sd_id} is held elsewhere"


class LockspaceUnavailable(ImageioError):
    template = "Lockspace of domain {sd_id} is not joined: {reason}"


class HookFailed(ImageioError):
    """A ``before_*`` hook vetoed; ``stderr`` carries what it printed."""

    template = "Hook {hook!r} vetoed {event}: {outcome}"


# VolumeNotFound (200) says which level of the volume's address is missing.


class DomainNotFound(VolumeNotFound):
    template = "Storage domain {sd_id} not found: {reason}"


class ImageNotFound(VolumeNotFound):
    template = "Image {img_id} not found in storage domain {sd_id}: {reason}"
