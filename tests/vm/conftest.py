"""Fixtures of the VM lane; these tests run only inside its guest.

The guest (tests/vm/runner.py) has dm_mod and loop loaded, systemd-udevd
and the sanlock daemon running. The session builds one block storage
domain the way vdsm lays it out: a volume group named like a domain UUID
on two loop devices, with the ``ids`` LV holding the sanlock lockspace
and the ``leases`` LV holding volume leases; volumes are LVs named like
volume UUIDs and tagged ``IU_<image UUID>``. Everything is removed at the
end, in reverse order.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sanlock

from storage.leases import Leases
from storage.udev import DeviceWatcher
from tests.support.daemon import Daemon, Limits, stop_and_check
from tests.vm.vmstorage import Domain, dm_name, run

IN_GUEST = os.environ.get("VDSM_IMAGEIO_VM") == "1"
# Imports and key generation in an emulated CPU on a 9p root take minutes;
# LVM commands take seconds, and Ticket.add and remove run them.
GUEST_LIMITS = Limits(ready=180.0, stop=30.0, io=120.0, poll=0.2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_GUEST:
        return
    # They create volume groups and start daemons: never on the host.
    skip = pytest.mark.skip(reason="runs inside the VM lane guest: make test-vm")
    for item in items:
        if "tests/vm/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    d = Domain(tmp_path_factory.mktemp("domain"), str(uuid.uuid4()))
    yield d
    d.remove()


@pytest.fixture(scope="session")
def lockspace(domain: Domain) -> Iterator[str]:
    """The domain's lockspace, joined as host 1 (vdsm does this at connect)."""
    name = domain.sd_id.encode()
    # A shorter io timeout than sanlock's 10 s shortens the join (the delta
    # lease waits on it), but renewals must still survive a starved,
    # emulated guest on a busy host: they fail after 8 io timeouts.
    sanlock.write_lockspace(name, domain.ids, iotimeout=5)
    sanlock.add_lockspace(name, 1, domain.ids, iotimeout=5)
    yield domain.sd_id
    sanlock.rem_lockspace(name, 1, domain.ids)


@pytest.fixture(scope="session")
def watcher() -> Iterator[DeviceWatcher]:
    w = DeviceWatcher()
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="session")
def leases() -> Leases:
    # One registration for the whole test process, as in the service.
    return Leases()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real daemon, started once: a Python start costs seconds here."""
    d = tmp_path_factory.mktemp("daemon")
    conf = (
        f"[storage]\nfile_root = {d / 'mnt'}\n\n"
        # Removal waits for canceled requests; lvm is slow in the guest.
        "[daemon]\nremove_timeout = 60\n"
    )
    daemon = Daemon(d, conf, limits=GUEST_LIMITS)
    yield daemon
    problem = stop_and_check(daemon)
    if problem is not None:
        pytest.fail(f"{problem}:\n{daemon.log()[-8000:]}")


VolumeFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def make_volume(domain: Domain) -> Iterator[VolumeFactory]:
    """Create LVs like vdsm volumes; the dict is a ticket's ``volume``."""
    created: list[str] = []

    def make(*, lease: bool = False, size_mib: int = 8) -> dict[str, Any]:
        img_id, vol_id = str(uuid.uuid4()), str(uuid.uuid4())
        domain.create_lv(vol_id, size_mib, tag=f"IU_{img_id}")
        created.append(vol_id)
        volume: dict[str, Any] = {
            "domain": "block",
            "sd_id": domain.sd_id,
            "img_id": img_id,
            "vol_id": vol_id,
        }
        if lease:
            offset = domain.lease_slot()
            sanlock.write_resource(
                domain.sd_id.encode(), vol_id.encode(), [(domain.leases, offset)]
            )
            volume["lease"] = {"path": domain.leases, "offset": offset}
        return volume

    yield make
    for vol_id in created:
        # A test that swapped a table for the error target leaves a bare dm
        # device; remove it before LVM removes the LV.
        run("dmsetup", "remove", "--retry", dm_name(domain.sd_id, vol_id), check=False)
        domain.remove_lv(vol_id)
