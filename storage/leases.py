"""Volume leases held through the sanlock daemon.

Rules:
- The process registers with sanlock once, on the first acquire, and keeps
  the registration socket open for its lifetime: sanlock releases every
  lease of a process whose socket closes, so a crash frees the volumes.
- A lease is the resource ``vol_id`` in the lockspace ``sd_id`` at
  (path, offset); the host must have joined the lockspace (vdsm does).
- One process holds a resource at most once: the caller (volumes) counts
  the tickets that need it.
- sanlock's errors are translated here and nowhere else: held elsewhere is
  LeaseBusy, lockspace not joined is LockspaceUnavailable, anything else is
  VolumeError with sanlock's message.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass

import sanlock

from vdsm_imageio.errors import (
    ImageioError,
    LeaseBusy,
    LockspaceUnavailable,
    VolumeError,
)

log = logging.getLogger(__name__)

# sanlock reports system errors as positive errno values and its own
# results as negative codes (sanlock_rv.h).
SANLK_ACQUIRE_IDLIVE = -243  # the owner's host is alive
SANLK_ACQUIRE_OWNED = -244  # owned by another host
SANLK_ACQUIRE_OTHER = -245  # another host is acquiring it
SANLK_ACQUIRE_SHRETRY = -246  # shared holders, retry
# EEXIST: held by a process on this host (also this one).
BUSY_ERRNOS = frozenset(
    {
        errno.EEXIST,
        errno.EAGAIN,
        errno.EBUSY,
        SANLK_ACQUIRE_IDLIVE,
        SANLK_ACQUIRE_OWNED,
        SANLK_ACQUIRE_OTHER,
        SANLK_ACQUIRE_SHRETRY,
    }
)
# cmd_acquire answers ENOSPC when the lockspace is not joined (or failed).
LOCKSPACE_ERRNOS = frozenset({errno.ENOSPC})


@dataclass(frozen=True)
class Lease:
    lockspace: str
    resource: str
    path: str
    offset: int

    def disks(self) -> list[tuple[str, int]]:
        return [(self.path, self.offset)]


def translate(e: sanlock.SanlockException, lease: Lease, action: str) -> ImageioError:
    code = e.errno
    reason = e.args[2] if len(e.args) > 2 else str(e)
    if action == "acquire" and code in BUSY_ERRNOS:
        return LeaseBusy(sd_id=lease.lockspace, vol_id=lease.resource, errno=code)
    if action == "acquire" and code in LOCKSPACE_ERRNOS:
        return LockspaceUnavailable(sd_id=lease.lockspace, reason=f"sanlock: {reason}", errno=code)
    return VolumeError(
        action=f"{action} the lease of",
        sd_id=lease.lockspace,
        vol_id=lease.resource,
        reason=f"sanlock: {reason}",
        errno=code,
    )


class Leases:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _registration(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = sanlock.register()
                log.info("LEASES registered with sanlock fd=%d", self._fd)
            return self._fd

    def acquire(self, lease: Lease) -> None:
        try:
            fd = self._registration()
            sanlock.acquire(_name(lease.lockspace), _name(lease.resource), lease.disks(), slkfd=fd)
        except sanlock.SanlockException as e:
            error = translate(e, lease, "acquire")
            log.warning(
                "ACQUIRE lease failed sd=%s vol=%s errno=%s",
                lease.lockspace,
                lease.resource,
                e.errno,
            )
            raise error from None
        log.info(
            "ACQUIRE lease sd=%s vol=%s path=%s offset=%d",
            lease.lockspace,
            lease.resource,
            lease.path,
            lease.offset,
        )

    def release(self, lease: Lease) -> None:
        try:
            sanlock.release(
                _name(lease.lockspace),
                _name(lease.resource),
                lease.disks(),
                slkfd=self._registration(),
            )
        except sanlock.SanlockException as e:
            raise translate(e, lease, "release") from None
        log.info("RELEASE lease sd=%s vol=%s", lease.lockspace, lease.resource)

    def held(self) -> list[tuple[str, str]]:
        """(lockspace, resource) of the leases sanlock says this process holds."""
        with self._lock:
            fd = self._fd
        if fd is None:
            return []
        return [
            (r["lockspace"].decode(), r["resource"].decode()) for r in sanlock.inquire(slkfd=fd)
        ]


def _name(value: str) -> bytes:
    # The binding takes lockspace and resource names as bytes only.
    return value.encode("utf-8")
