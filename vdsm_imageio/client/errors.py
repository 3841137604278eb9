"""What can go wrong in a transfer, said so a person knows what to do.

Each error renders one line: what is wrong, a colon, and what to do about
it. Foreign errors (ssl, socket, http.client, qemu-nbd, HTTP statuses) are
translated once, where they happen (``client.http``, ``client.images``,
``client.local``); the command maps the classes to exit codes in the one
table below, which ``--help`` and the README print.
"""

from __future__ import annotations

from typing import Any

OK = 0
FAILED = 1
USAGE = 2
UNTRUSTED = 3
REFUSED = 4
TOO_LARGE = 5
STORAGE_FULL = 6
UNREACHABLE = 7
MISMATCH = 8
INTERRUPTED = 130


class ClientError(Exception):
    """Base of the client's errors: ``problem`` and ``advice`` are templates."""

    problem = "transfer failed"
    advice = ""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        text = self.problem.format(**fields)
        if self.advice:
            text += ": " + self.advice.format(**fields)
        super().__init__(text)


# The command line or the local files.


class UsageError(ClientError):
    problem = "{reason}"


class LocalImageError(ClientError):
    problem = "cannot use {path}: {reason}"


class ResumeMismatch(UsageError):
    problem = "the journal {journal} belongs to another transfer ({field} differs)"
    advice = "run without --resume to start over, or remove the journal"


class TargetExists(UsageError):
    problem = "{path} exists{what}"
    advice = "{how}"


# The server or the way to it.


class Untrusted(ClientError):
    problem = "cannot verify the certificate of {server}: {reason}"
    advice = (
        "pass the CA that signed it with --cafile (oVirt: the engine's CA, "
        "/ovirt-engine/services/pki-resource?resource=ca-certificate&format=X509-PEM-CA), "
        "or --insecure to skip the check"
    )


class Unreachable(ClientError):
    problem = "cannot reach {server}: {reason}"
    advice = "check that vdsm-imageio runs on the host and the address and port are right"


class ConnectionLost(Unreachable):
    problem = "lost the connection to {server} during the transfer: {reason}"
    advice = "when the service is back, run the same command with --resume to continue"


class TicketRefused(ClientError):
    """403: no such ticket, expired, canceled, or the operation not allowed."""

    problem = "the server refused the transfer: {message}"
    advice = (
        "the transfer URL has expired, was canceled or is wrong; ask the engine "
        "for a new transfer (or to extend this one) and run again"
    )


class ReadOnlyTransfer(TicketRefused):
    problem = "this transfer URL allows downloading only (its ticket does not allow writing)"
    advice = "start an upload transfer to get a URL that accepts data"


class DoesNotFit(ClientError):
    problem = "the source ({size} bytes{what}) is larger than the disk ({disk} bytes)"
    advice = "extend the disk to at least {size} bytes or upload to a larger disk"


class StorageFull(ClientError):
    problem = "the server's storage is full: {message}"
    advice = "free or add space on the storage domain, then run again with --resume"


class Unsupported(ClientError):
    problem = "the server cannot {what}: {message}"
    advice = "{how}"


class ServerBusy(ClientError):
    problem = "the server is busy: {message}"
    advice = "retry later, or with fewer --workers; --resume continues"


class ServerError(ClientError):
    problem = "the server failed ({status}): {message}"
    advice = "see the service's log on the host; run again with --resume to continue"


class ProtocolError(ClientError):
    problem = "unexpected reply from {server}: {reason}"
    advice = "is the URL a vdsm-imageio or ovirt-imageio transfer URL?"


class ChecksumMismatch(ClientError):
    problem = (
        "verification failed: the {where} image differs, {algorithm} checksum "
        "local={local} server={remote}"
    )
    advice = "the data was damaged on the way or on the storage; transfer it again"


class Interrupted(ClientError):
    problem = "interrupted"
    advice = "{how}"


# Most specific class first: the first match wins.
EXIT_CODES: tuple[tuple[type[ClientError], int, str], ...] = (
    (UsageError, USAGE, "bad arguments, missing source, existing target, foreign journal"),
    (Untrusted, UNTRUSTED, "the server's certificate is not trusted (--cafile)"),
    (TicketRefused, REFUSED, "the ticket is missing, expired, canceled or read-only"),
    (DoesNotFit, TOO_LARGE, "the source is larger than the disk"),
    (StorageFull, STORAGE_FULL, "the server's storage is full"),
    (Unreachable, UNREACHABLE, "the server cannot be reached or went away"),
    (ChecksumMismatch, MISMATCH, "--verify found different checksums"),
    (Interrupted, INTERRUPTED, "Ctrl-C or SIGTERM; the journal is kept for --resume"),
    (ClientError, FAILED, "any other failure (server error, local I/O)"),
)


def exit_code(error: ClientError) -> int:
    for cls, code, _ in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return FAILED


def exit_code_help() -> str:
    """The exit code table as the --help epilog shows it."""
    rows = [f"  {OK:>3}  success"]
    rows += [f"  {code:>3}  {why}" for _, code, why in EXIT_CODES]
    return "exit codes:\n" + "\n".join(rows)
