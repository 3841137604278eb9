"""storage.leases: sanlock's errors become domain errors in one place.

The codes are the ones the sanlock daemon answers (recorded in the VM
lane, where tests/vm/test_vm_leases.py meets them for real)."""

from __future__ import annotations

import errno

import pytest
import sanlock

from storage.leases import Lease, translate
from vdsm_imageio.errors import LeaseBusy, LockspaceUnavailable, VolumeError

LEASE = Lease(lockspace="sd", resource="vol", path="/dev/sd/leases", offset=1048576)


def exc(code: int, message: str) -> sanlock.SanlockException:
    return sanlock.SanlockException(code, "Sanlock resource not acquired", message)


@pytest.mark.parametrize("code", [errno.EEXIST, errno.EAGAIN, errno.EBUSY, -243, -244, -245, -246])
def test_held_elsewhere_is_lease_busy(code: int) -> None:
    error = translate(exc(code, "File exists"), LEASE, "acquire")
    assert isinstance(error, LeaseBusy)
    assert error.fields == {"sd_id": "sd", "vol_id": "vol", "errno": code}


def test_lockspace_not_joined_is_unavailable() -> None:
    error = translate(exc(errno.ENOSPC, "No space left on device"), LEASE, "acquire")
    assert isinstance(error, LockspaceUnavailable)
    assert error.fields["reason"] == "sanlock: No space left on device"


def test_other_failure_is_volume_error_with_sanlock_message() -> None:
    error = translate(exc(-223, "Lease does not exist on storage"), LEASE, "acquire")
    assert type(error) is VolumeError
    assert str(error) == (
        "Cannot acquire the lease of volume vol of domain sd: "
        "sanlock: Lease does not exist on storage"
    )


def test_release_failure_is_volume_error() -> None:
    error = translate(exc(errno.EPERM, "Operation not permitted"), LEASE, "release")
    assert type(error) is VolumeError
    assert error.fields["action"] == "release the lease of"
