"""Domain errors of the service.

Each error names who is at fault in its class name and takes its details
as typed keyword arguments, so a raise site that forgets one or misnames
one is a type error, not a KeyError while the message is rendered. The
message is one line made from them; ``fields`` keeps the details given
(those left None, unknown, are left out) for the JSON-RPC ``data``.
The HTTP edge (``vdsm_imageio.http.errors``) and the JSON-RPC edge
(``verbs.errors``) each map these classes to their status or code in one
table; nothing else builds a status from a domain error.

A class whose details differ from its parent's initializes ``ImageioError``
directly: its parent's constructor takes other arguments.
"""

from __future__ import annotations


class ImageioError(Exception):
    """Base of all domain errors: a message and the details it was made from."""

    def __init__(self, message: str, /, **fields: object) -> None:
        super().__init__(message)
        self.fields: dict[str, object] = {k: v for k, v in fields.items() if v is not None}

    @property
    def message(self) -> str:
        return str(self)


# Caused by the caller of the control channel.


class InvalidTicket(ImageioError):
    def __init__(self, *, field: str, reason: str) -> None:
        super().__init__(f"Invalid ticket field {field!r}: {reason}", field=field, reason=reason)
        self.field = field
        self.reason = reason


class InvalidParam(ImageioError):
    def __init__(self, *, field: str, reason: str) -> None:
        super().__init__(f"Invalid parameter {field!r}: {reason}", field=field, reason=reason)
        self.field = field
        self.reason = reason


class TicketNotFound(ImageioError):
    def __init__(self, *, uuid: str) -> None:
        super().__init__(f"No such ticket: {uuid}", uuid=uuid)


class TicketConflict(ImageioError):
    def __init__(self, *, uuid: str, field: str) -> None:
        super().__init__(
            f"Ticket {uuid} exists with different content (field {field!r})",
            uuid=uuid,
            field=field,
        )
        self.field = field

    def renamed(self, uuid: str) -> TicketConflict:
        """The same error naming the ticket as uuid (its transfer, not its secret)."""
        return TicketConflict(uuid=uuid, field=self.field)


class TicketRemoving(TicketConflict):
    """The ticket was canceled: its removal was agreed, maybe still under way."""

    def __init__(self, *, uuid: str) -> None:
        ImageioError.__init__(
            self,
            f"Ticket {uuid} is being removed; add it again once the removal is done",
            uuid=uuid,
        )

    def renamed(self, uuid: str) -> TicketRemoving:
        return TicketRemoving(uuid=uuid)


class TicketBusy(ImageioError):
    def __init__(self, *, uuid: str, running: int, timeout: float) -> None:
        super().__init__(
            f"Ticket {uuid} still has {running} running requests after "
            f"{timeout} seconds; retry the removal",
            uuid=uuid,
            running=running,
            timeout=timeout,
        )
        self.running = running
        self.timeout = timeout

    def renamed(self, uuid: str) -> TicketBusy:
        return TicketBusy(uuid=uuid, running=self.running, timeout=self.timeout)


# Caused by the data client: the request is not allowed.


class Forbidden(ImageioError):
    """The request is not authorized by any live ticket."""

    def __init__(self, *, reason: str) -> None:
        super().__init__(reason, reason=reason)


class TicketCanceled(Forbidden):
    def __init__(self, *, transfer_id: str) -> None:
        ImageioError.__init__(self, f"Transfer {transfer_id} was canceled", transfer_id=transfer_id)


class StorageReadOnly(Forbidden):
    """The backend was opened for reading only; the write never reached it."""

    def __init__(self, *, op: str) -> None:
        ImageioError.__init__(self, f"Storage of this transfer is read-only; cannot {op}", op=op)


# Caused by the data client: the request is malformed.


class BadRequest(ImageioError):
    def __init__(self, *, field: str, reason: str) -> None:
        super().__init__(f"Invalid {field}: {reason}", field=field, reason=reason)


class NotFound(ImageioError):
    def __init__(self, *, reason: str) -> None:
        super().__init__(reason, reason=reason)


class MethodNotAllowed(ImageioError):
    def __init__(self, *, method: str, path: str, allow: str) -> None:
        super().__init__(
            f"Method {method} is not allowed on {path}", method=method, path=path, allow=allow
        )
        # RFC 9110 section 15.5.6: a 405 lists the methods the resource has.
        self.allow = allow


class RangeNotSatisfiable(ImageioError):
    def __init__(self, *, size: int) -> None:
        super().__init__(f"Requested range is outside the image (size {size})", size=size)
        # RFC 9110 section 15.5.17: a 416 tells the current length.
        self.size = size


class PayloadTooLarge(ImageioError):
    def __init__(self, *, length: int | None, limit: int) -> None:
        """length None: a body of unknown length (chunked) went past limit."""
        of = "" if length is None else f" of {length} bytes"
        super().__init__(
            f"Request body{of} exceeds the limit of {limit} bytes", length=length, limit=limit
        )


class HeadersTooLarge(ImageioError):
    def __init__(self, *, reason: str) -> None:
        super().__init__(reason, reason=reason)


class LengthRequired(ImageioError):
    def __init__(self) -> None:
        super().__init__("Content-Length or chunked Transfer-Encoding is required")


class UnsupportedMediaType(ImageioError):
    def __init__(self, *, reason: str) -> None:
        super().__init__(reason, reason=reason)


class UnsupportedContext(ImageioError):
    """Extents were asked for a context this backend cannot report."""

    def __init__(self, *, context: str, reason: str) -> None:
        super().__init__(f"No {context!r} extents: {reason}", context=context, reason=reason)


# Caused by load: try again later.


class TooManyConnections(ImageioError):
    def __init__(self, *, kind: str, transfer_id: str, limit: int) -> None:
        super().__init__(
            f"Too many {kind} connections for transfer {transfer_id} "
            f"(limit {limit}); retry when one closes",
            kind=kind,
            transfer_id=transfer_id,
            limit=limit,
        )


class ServiceBusy(ImageioError):
    def __init__(self, *, limit: int) -> None:
        super().__init__(f"Service has {limit} open connections; retry later", limit=limit)


# Caused by the storage or the peer.


class BackendError(ImageioError):
    def __init__(self, *, reason: str) -> None:
        super().__init__(f"Storage I/O failed: {reason}", reason=reason)


class StorageFull(BackendError):
    """No space left on the storage (ENOSPC) or the quota is used up (EDQUOT).

    Not a bug of ours and not the client's fault: the administrator must
    free or add space, then the client retries. On a block device ENOSPC
    also means the range ends past the device.
    """

    def __init__(self, *, reason: str) -> None:
        ImageioError.__init__(self, f"Not enough space on the storage: {reason}", reason=reason)


class ImageEnded(BackendError):
    """The image is shorter than a range being read: it shrank under the
    transfer (a file truncated), or a reader stopped early. The storage's
    fault, not the client's; the reply's head is usually sent already."""

    def __init__(self, *, offset: int, end: int) -> None:
        ImageioError.__init__(
            self,
            f"Image ended at offset {offset}, before the end of the range at {end}",
            offset=offset,
            end=end,
        )


class PeerClosed(ImageioError):
    def __init__(self, *, reason: str) -> None:
        super().__init__(f"Client closed the connection: {reason}", reason=reason)


# Caused by the host daemon behind a proxy ticket (backends.http). Each is a
# storage failure for the request (a BackendError), and names who failed in
# its class: the host could not be reached, went away, took too long, or
# refused the request. ``host`` is "address:port" or "unix socket", never
# the URL: its path holds the host's ticket id.


class HostError(BackendError):
    """The host failed the request in a way of its own (a 5xx, a reply that
    is not its API's); the subclasses name the other ways."""

    def __init__(self, *, host: str, reason: str) -> None:
        ImageioError.__init__(
            self, f"Host daemon at {host} failed: {reason}", host=host, reason=reason
        )
        self.host = host


class HostUnreachable(HostError):
    """No connection: refused, no route, name not found, TLS refused."""

    def __init__(self, *, host: str, reason: str) -> None:
        ImageioError.__init__(
            self, f"Cannot reach the host daemon at {host}: {reason}", host=host, reason=reason
        )
        self.host = host


class HostUntrusted(HostUnreachable):
    """The host's certificate does not verify against [backend_http] ca_file."""

    def __init__(self, *, host: str, reason: str) -> None:
        ImageioError.__init__(
            self, f"Host daemon at {host} is not trusted: {reason}", host=host, reason=reason
        )
        self.host = host


class HostGone(HostError):
    """The host closed or broke the connection, or sent what is not HTTP."""

    def __init__(self, *, host: str, reason: str) -> None:
        ImageioError.__init__(
            self,
            f"Host daemon at {host} closed the connection: {reason}",
            host=host,
            reason=reason,
        )
        self.host = host


class HostTimeout(HostError):
    def __init__(self, *, host: str, timeout: float) -> None:
        ImageioError.__init__(
            self,
            f"Host daemon at {host} did not answer within {timeout:g} seconds",
            host=host,
            reason="timed out",
            timeout=timeout,
        )
        self.host = host
        self.timeout = timeout


class HostRefused(HostError):
    """The host answered the request with an error status; the client gets
    that status (``http.errors``) and the host's one-line message. size is
    the image's size when known, which a 416 tells."""

    def __init__(self, *, host: str, status: int, reason: str, size: int | None = None) -> None:
        ImageioError.__init__(
            self,
            f"Host daemon at {host}: {reason}",
            host=host,
            reason=reason,
            status=status,
            size=size,
        )
        self.host = host
        self.status = status
        self.size = size


class HostForbidden(HostRefused):
    """403 from the host: its ticket is missing, expired, canceled or does
    not allow the request. The client's connection closes, as for ours."""


# Caused by the storage plane or a hook: the control request cannot proceed.


class VolumeNotFound(ImageioError):
    def __init__(self, *, sd_id: str, img_id: str, vol_id: str) -> None:
        super().__init__(
            f"Volume {vol_id} of image {img_id} not found in domain {sd_id}",
            sd_id=sd_id,
            img_id=img_id,
            vol_id=vol_id,
        )

    def at(self, *, sd_id: str, img_id: str, vol_id: str) -> VolumeNotFound:
        """The same error naming the whole address of the volume."""
        return VolumeNotFound(sd_id=sd_id, img_id=img_id, vol_id=vol_id)


class VolumeError(ImageioError):
    """Prepare or teardown failed; ``reason`` carries the tool's message,
    ``rc`` its exit code or ``errno`` its error number when known."""

    def __init__(
        self,
        *,
        action: str,
        sd_id: str,
        vol_id: str,
        reason: str,
        rc: int | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(
            f"Cannot {action} volume {vol_id} of domain {sd_id}: {reason}",
            action=action,
            sd_id=sd_id,
            vol_id=vol_id,
            reason=reason,
            rc=rc,
            errno=errno,
        )


class LeaseBusy(ImageioError):
    def __init__(self, *, sd_id: str, vol_id: str, errno: int | None = None) -> None:
        super().__init__(
            f"Lease of volume {vol_id} in domain {sd_id} is held elsewhere",
            sd_id=sd_id,
            vol_id=vol_id,
            errno=errno,
        )


class LockspaceUnavailable(ImageioError):
    def __init__(self, *, sd_id: str, reason: str, errno: int | None = None) -> None:
        super().__init__(
            f"Lockspace of domain {sd_id} is not joined: {reason}",
            sd_id=sd_id,
            reason=reason,
            errno=errno,
        )


class HookFailed(ImageioError):
    """A ``before_*`` hook vetoed; ``stderr`` carries what it printed."""

    def __init__(
        self, *, hook: str, event: str, outcome: str, status: int, stderr: str | None = None
    ) -> None:
        super().__init__(
            f"Hook {hook!r} vetoed {event}: {outcome}",
            hook=hook,
            event=event,
            outcome=outcome,
            status=status,
            stderr=stderr,
        )


# VolumeNotFound (200) says which level of the volume's address is missing.


class _LevelNotFound(VolumeNotFound):
    """A level of the volume's address is missing; reason says how it was seen."""

    def __init__(
        self, message: str, *, sd_id: str, img_id: str | None, vol_id: str | None, reason: str
    ) -> None:
        ImageioError.__init__(
            self, message, sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=reason
        )
        self.reason = reason


class DomainNotFound(_LevelNotFound):
    def __init__(
        self, *, sd_id: str, reason: str, img_id: str | None = None, vol_id: str | None = None
    ) -> None:
        message = f"Storage domain {sd_id} not found: {reason}"
        super().__init__(message, sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=reason)

    def at(self, *, sd_id: str, img_id: str, vol_id: str) -> DomainNotFound:
        return DomainNotFound(sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=self.reason)


class ImageNotFound(_LevelNotFound):
    def __init__(self, *, sd_id: str, img_id: str, reason: str, vol_id: str | None = None) -> None:
        message = f"Image {img_id} not found in storage domain {sd_id}: {reason}"
        super().__init__(message, sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=reason)

    def at(self, *, sd_id: str, img_id: str, vol_id: str) -> ImageNotFound:
        return ImageNotFound(sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=self.reason)
