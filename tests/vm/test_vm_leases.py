"""storage.leases against the sanlock daemon."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.leases import Lease, Leases
from tests.vm.vmstorage import LeaseHolder, holds, sanlock_status
from vdsm_imageio.errors import LeaseBusy, LockspaceUnavailable

VolumeFactory = Callable[..., dict[str, Any]]


def lease_of(vol: dict[str, Any]) -> Lease:
    return Lease(
        lockspace=vol["sd_id"],
        resource=vol["vol_id"],
        path=vol["lease"]["path"],
        offset=vol["lease"]["offset"],
    )


def test_acquire_shows_in_status_until_release(
    lockspace: str, make_volume: VolumeFactory, leases: Leases
) -> None:
    vol = make_volume(lease=True)
    leases.acquire(lease_of(vol))
    try:
        assert holds(sanlock_status(), lockspace, vol["vol_id"])
        assert (lockspace, vol["vol_id"]) in leases.held()
    finally:
        leases.release(lease_of(vol))
    assert not holds(sanlock_status(), lockspace, vol["vol_id"])
    assert (lockspace, vol["vol_id"]) not in leases.held()


def test_lease_held_by_another_process_is_busy(
    lockspace: str, make_volume: VolumeFactory, leases: Leases
) -> None:
    vol = make_volume(lease=True)
    with LeaseHolder(vol):
        with pytest.raises(LeaseBusy) as e:
            leases.acquire(lease_of(vol))
        assert e.value.fields["sd_id"] == lockspace
    # Released when the holder exits: now it is ours to take.
    leases.acquire(lease_of(vol))
    leases.release(lease_of(vol))


def test_lockspace_not_joined_is_unavailable(leases: Leases, tmp_path: Path) -> None:
    lease = Lease(
        lockspace="99999999-0000-4000-8000-000000000000",
        resource="vol",
        path=str(tmp_path / "leases"),
        offset=0,
    )
    with pytest.raises(LockspaceUnavailable) as e:
        leases.acquire(lease)
    assert e.value.fields["sd_id"] == lease.lockspace
