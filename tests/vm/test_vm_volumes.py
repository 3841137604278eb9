"""storage.volumes: block volumes prepared for tickets, with real LVM,
udev and sanlock, plugged into the ticket registry as the service does."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sanlock

from storage.leases import Leases
from storage.lvm import Lvm
from storage.udev import DeviceWatcher
from storage.volumes import Volumes
from tests.support.errors import detail
from tests.support.tickets import volume_of
from tests.vm.vmstorage import (
    Domain,
    LeaseHolder,
    dm_name,
    holds,
    is_active,
    run,
    sanlock_status,
    spec,
)
from vdsm_imageio.errors import ImageNotFound, LeaseBusy, VolumeError, VolumeNotFound
from vdsm_imageio.registry import Registry

VolumeFactory = Callable[..., dict[str, Any]]
EVENT_TIMEOUT = 30


@pytest.fixture
def volumes(tmp_path: Path, watcher: DeviceWatcher, leases: Leases) -> Volumes:
    return Volumes(
        file_root=tmp_path / "mnt",
        run_dir=tmp_path / "run",
        lvm=Lvm(),
        udev=watcher,
        leases=leases,
        clock=time.monotonic,
    )


@pytest.fixture
def registry(volumes: Volumes) -> Iterator[Registry]:
    reg = Registry(
        clock=time.monotonic,
        remove_timeout=5,
        default_inactivity_timeout=60,
        resolve_url=volumes.prepare,
        release=volumes.release,
    )
    yield reg
    for ticket in reg.list():
        reg.remove(ticket.spec.uuid)


def link_of(url: str) -> Path:
    return Path(urlsplit(url).path)


def ticket(volume: dict[str, Any], ops: tuple[str, ...] = ("read",)) -> dict[str, Any]:
    return {
        "uuid": os.urandom(8).hex(),
        "size": 8 * 1024**2,
        "ops": list(ops),
        "timeout": 300,
        "transfer_id": "t-" + os.urandom(4).hex(),
        "volume": volume,
    }


def test_prepare_links_active_volume_and_release_deactivates(
    domain: Domain, make_volume: VolumeFactory, volumes: Volumes, tmp_path: Path
) -> None:
    vol = make_volume()
    s = spec(vol, ops=("read", "write"))
    url = volumes.prepare(s)
    link = link_of(url)
    assert url.startswith("file:///")
    assert link == tmp_path / "run" / "storage" / vol["sd_id"] / vol["img_id"] / vol["vol_id"]
    assert os.readlink(link) == f"/dev/{vol['sd_id']}/{vol['vol_id']}"
    assert link.is_block_device()
    assert is_active(domain, vol["vol_id"])
    with open(link, "r+b", buffering=0) as f:
        f.write(b"x" * 4096)
    volumes.release(s)
    assert not is_active(domain, vol["vol_id"])
    assert not os.path.lexists(link)
    assert not (tmp_path / "run" / "storage" / vol["sd_id"]).exists()


def test_registry_add_and_remove_prepare_and_tear_down(
    domain: Domain, make_volume: VolumeFactory, registry: Registry
) -> None:
    vol = make_volume()
    t = registry.add(ticket(vol, ops=("write",)))
    assert link_of(t.url).is_block_device()
    registry.remove(t.spec.uuid)
    assert not is_active(domain, vol["vol_id"])
    assert not os.path.lexists(link_of(t.url))


def test_two_tickets_share_one_preparation(
    domain: Domain, make_volume: VolumeFactory, registry: Registry, volumes: Volumes
) -> None:
    vol = make_volume()
    first = registry.add(ticket(vol))
    second = registry.add(ticket(vol))
    assert first.url == second.url
    assert volumes.references(volume_of(second.spec)) == 2
    registry.remove(first.spec.uuid)
    assert is_active(domain, vol["vol_id"])
    assert link_of(second.url).is_block_device()
    registry.remove(second.spec.uuid)
    assert not is_active(domain, vol["vol_id"])
    assert not os.path.lexists(link_of(second.url))


def test_already_active_volume_is_left_active(
    domain: Domain, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume()
    Lvm().activate(domain.sd_id, vol["vol_id"])
    s = spec(vol)
    volumes.prepare(s)
    volumes.release(s)
    # Someone else activated it (vdsm, a VM): not ours to deactivate.
    assert is_active(domain, vol["vol_id"])
    Lvm().deactivate(domain.sd_id, vol["vol_id"])


def test_write_ticket_holds_lease_until_release(
    lockspace: str, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume(lease=True)
    s = spec(vol, ops=("write",))
    volumes.prepare(s)
    assert holds(sanlock_status(), lockspace, vol["vol_id"])
    volumes.release(s)
    assert not holds(sanlock_status(), lockspace, vol["vol_id"])


def test_read_ticket_takes_no_lease(
    lockspace: str, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume(lease=True)
    s = spec(vol, ops=("read",))
    volumes.prepare(s)
    try:
        assert not holds(sanlock_status(), lockspace, vol["vol_id"])
    finally:
        volumes.release(s)


def test_lease_kept_while_a_writer_remains(
    lockspace: str, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume(lease=True)
    reader, writer = spec(vol), spec(vol, ops=("write",))
    volumes.prepare(reader)
    volumes.prepare(writer)
    assert holds(sanlock_status(), lockspace, vol["vol_id"])
    volumes.release(writer)
    # The reader still uses the volume; the lease only guarded writing.
    assert not holds(sanlock_status(), lockspace, vol["vol_id"])
    assert volumes.references(volume_of(reader)) == 1
    volumes.release(reader)


def test_busy_lease_leaves_nothing_prepared(
    domain: Domain, lockspace: str, make_volume: VolumeFactory, volumes: Volumes, tmp_path: Path
) -> None:
    vol = make_volume(lease=True)
    with LeaseHolder(vol):
        with pytest.raises(LeaseBusy):
            volumes.prepare(spec(vol, ops=("write",)))
    assert not is_active(domain, vol["vol_id"])
    assert not (tmp_path / "run" / "storage" / vol["sd_id"]).exists()


def test_missing_volume_releases_the_lease(
    domain: Domain, lockspace: str, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume(lease=True)
    missing = dict(vol, vol_id="00000000-1111-4222-8333-444444444444")
    # Its lease exists (vdsm creates it with the volume); its LV does not.
    missing["lease"] = {"path": domain.leases, "offset": domain.lease_slot()}
    sanlock.write_resource(
        domain.sd_id.encode(),
        missing["vol_id"].encode(),
        [(domain.leases, missing["lease"]["offset"])],
    )
    with pytest.raises(VolumeNotFound) as e:
        volumes.prepare(spec(missing, ops=("write",)))
    assert e.value.fields["img_id"] == vol["img_id"]
    assert not holds(sanlock_status(), lockspace, missing["vol_id"])


def test_volume_of_another_image_is_image_not_found(
    domain: Domain, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume()
    with pytest.raises(ImageNotFound):
        volumes.prepare(spec(dict(vol, img_id="aaaaaaaa-0000-4000-8000-000000000000")))
    assert not is_active(domain, vol["vol_id"])


def test_volume_open_elsewhere_at_teardown_is_reported(
    domain: Domain, make_volume: VolumeFactory, volumes: Volumes
) -> None:
    vol = make_volume()
    s = spec(vol)
    link = link_of(volumes.prepare(s))
    fd = os.open(link, os.O_RDONLY)
    try:
        with pytest.raises(VolumeError) as e:
            volumes.release(s)
        assert "open elsewhere" in detail(e.value, "reason", str)
        assert not os.path.lexists(link)
    finally:
        os.close(fd)
    Lvm().deactivate(domain.sd_id, vol["vol_id"])


def test_pulled_device_cancels_ticket_and_reads_fail(
    domain: Domain, make_volume: VolumeFactory, volumes: Volumes, registry: Registry
) -> None:
    vol = make_volume()
    lost: queue.Queue[tuple[str, str, str]] = queue.Queue()

    def on_lost(uuid: str, device: str, action: str) -> None:
        registry.get(uuid).cancel()
        lost.put((uuid, device, action))

    volumes.on_lost = on_lost
    t = registry.add(ticket(vol))
    node = os.path.realpath(link_of(t.url))
    assert volumes.tickets_using(node) == [t.spec.uuid]
    # A transfer has the device open, as the file backend would.
    fd = os.open(link_of(t.url), os.O_RDONLY | os.O_DIRECT)
    try:
        run("dmsetup", "remove", "--force", dm_name(domain.sd_id, vol["vol_id"]), check=False)
        uuid, device, action = lost.get(timeout=EVENT_TIMEOUT)
        assert (uuid, device) == (t.spec.uuid, node)
        assert action in ("change", "remove")
        assert t.canceled
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        with pytest.raises(OSError) as e:
            os.preadv(fd, [buf], 0)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
    # Once nothing holds the bare device, teardown deactivates it.
    registry.remove(t.spec.uuid)
    assert not is_active(domain, vol["vol_id"])
    assert not os.path.lexists(link_of(t.url))


def test_refresh_of_watched_volume_is_not_lost(
    domain: Domain, make_volume: VolumeFactory, volumes: Volumes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage.volumes")
    vol = make_volume()
    lost: queue.Queue[tuple[str, str, str]] = queue.Queue()
    volumes.on_lost = lambda *args: lost.put(args)
    checked: queue.Queue[str] = queue.Queue()
    handler = _QueueHandler(checked)
    logging.getLogger("storage.volumes").addHandler(handler)
    s = spec(vol)
    volumes.prepare(s)
    try:
        Lvm().activate(domain.sd_id, vol["vol_id"])  # refresh: a change event
        # The watcher looked at the change and found the LV still active.
        while "still active" not in checked.get(timeout=EVENT_TIMEOUT):
            pass
        assert lost.empty()
    finally:
        logging.getLogger("storage.volumes").removeHandler(handler)
        volumes.release(s)


class _QueueHandler(logging.Handler):
    def __init__(self, messages: queue.Queue[str]) -> None:
        super().__init__(logging.INFO)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.put(record.getMessage())
