"""storage.volumes with file domains on the host, plugged into the registry.

Block volumes, udev and leases run for real in the VM lane (tests/vm)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from storage.leases import Leases
from storage.lvm import Lvm
from storage.udev import DeviceWatcher
from storage.volumes import Volumes
from tests.support.errors import detail
from tests.support.procs import qemu_nbd_pids
from tests.support.tickets import volume_of
from vdsm_imageio.errors import VolumeError, VolumeNotFound
from vdsm_imageio.registry import Registry

SD, IMG, VOL = "sd-1", "img-1", "vol-1"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    image = tmp_path / "mnt" / "server:_export" / SD / "images" / IMG
    image.mkdir(parents=True)
    (image / VOL).write_bytes(b"x" * 4096)
    return tmp_path


@pytest.fixture
def volumes(root: Path) -> Volumes:
    # The watcher is never started: file volumes have no device to watch.
    return Volumes(
        file_root=root / "mnt",
        run_dir=root / "run",
        lvm=Lvm(),
        udev=DeviceWatcher(),
        leases=Leases(),
        clock=time.monotonic,
    )


@pytest.fixture
def registry(volumes: Volumes) -> Registry:
    return Registry(
        clock=time.monotonic,
        remove_timeout=1,
        default_inactivity_timeout=60,
        resolve_url=volumes.prepare,
        release=volumes.release,
    )


def ticket(uuid: str, ops: tuple[str, ...] = ("read",), **volume: Any) -> dict[str, Any]:
    vol = {"domain": "file", "sd_id": SD, "img_id": IMG, "vol_id": VOL, **volume}
    return {
        "uuid": uuid,
        "size": 4096,
        "ops": list(ops),
        "timeout": 60,
        "transfer_id": f"transfer-{uuid}",
        "volume": vol,
    }


def link(root: Path) -> Path:
    return root / "run" / "storage" / SD / IMG / VOL


def test_add_serves_the_volume_through_a_link(root: Path, registry: Registry) -> None:
    t = registry.add(ticket("t1"))
    assert urlsplit(t.url).scheme == "file"
    assert Path(urlsplit(t.url).path) == link(root)
    assert os.readlink(link(root)) == str(
        root / "mnt" / "server:_export" / SD / "images" / IMG / VOL
    )
    registry.remove("t1")
    assert not os.path.lexists(link(root))


def test_volume_is_torn_down_with_its_last_ticket(
    root: Path, registry: Registry, volumes: Volumes
) -> None:
    first = registry.add(ticket("t1"))
    second = registry.add(ticket("t2", ops=("write",)))
    assert first.url == second.url
    assert volumes.references(volume_of(first.spec)) == 2
    registry.remove("t1")
    assert os.path.lexists(link(root))
    registry.remove("t2")
    assert not os.path.lexists(link(root))
    assert volumes.references(volume_of(first.spec)) == 0


def test_racing_add_of_one_uuid_keeps_the_winner_prepared(
    root: Path, volumes: Volumes, registry: Registry
) -> None:
    spec = registry.parse(ticket("t1"))
    # The registry prepares both racers and releases the loser once.
    volumes.prepare(spec)
    volumes.prepare(spec)
    volumes.release(spec)
    assert os.path.lexists(link(root))
    volumes.release(spec)
    assert not os.path.lexists(link(root))


def test_missing_volume_fails_add_and_leaves_nothing(root: Path, registry: Registry) -> None:
    with pytest.raises(VolumeNotFound):
        registry.add(ticket("t1", vol_id="vol-2"))
    assert registry.list() == []
    assert not (root / "run" / "storage" / SD).exists()


@pytest.mark.skipif(
    os.path.exists("/run/sanlock/sanlock.sock"), reason="needs a host without the sanlock daemon"
)
def test_lease_failure_fails_add_and_leaves_nothing_linked(root: Path, registry: Registry) -> None:
    lease = {"path": str(root / "leases"), "offset": 0}
    with pytest.raises(VolumeError) as e:
        registry.add(ticket("t1", ops=("write",), lease=lease))
    assert "sanlock" in detail(e.value, "reason", str)
    assert not (root / "run" / "storage" / SD).exists()


def test_read_ticket_takes_no_lease(root: Path, registry: Registry) -> None:
    # A read ticket never talks to sanlock, so it works without the daemon.
    lease = {"path": str(root / "leases"), "offset": 0}
    t = registry.add(ticket("t1", lease=lease))
    assert os.path.lexists(Path(urlsplit(t.url).path))
    registry.remove("t1")


def test_url_ticket_passes_through(registry: Registry, root: Path) -> None:
    t = registry.add(
        {"uuid": "t1", "size": 1, "ops": ["read"], "timeout": 60, "url": f"file://{root}/x"}
    )
    assert t.url == f"file://{root}/x"
    registry.remove("t1")


def test_release_of_unprepared_volume_is_ignored(volumes: Volumes, registry: Registry) -> None:
    volumes.release(registry.parse(ticket("t1")))


def test_tickets_using_a_target(root: Path, registry: Registry, volumes: Volumes) -> None:
    registry.add(ticket("t1"))
    registry.add(ticket("t2"))
    target = os.readlink(link(root))
    assert sorted(volumes.tickets_using(target)) == ["t1", "t2"]
    assert volumes.tickets_using("/dev/dm-9") == []
    registry.remove("t1")
    registry.remove("t2")


# Volumes served through qemu-nbd (a real qemu-nbd per volume).


def test_nbd_volume_is_served_by_one_qemu_nbd_until_its_last_ticket(
    root: Path, registry: Registry
) -> None:
    first = registry.add(ticket("t1", ops=("write",), nbd=True))
    second = registry.add(ticket("t2", nbd=True))
    assert first.url == second.url
    assert first.url.startswith(f"nbd:unix:{root / 'run' / 'nbd'}/")
    [pid] = qemu_nbd_pids(root)
    registry.remove("t1")
    assert qemu_nbd_pids(root) == [pid]
    registry.remove("t2")
    assert qemu_nbd_pids(root) == []
    assert not os.path.exists(f"/proc/{pid}")  # reaped, not a zombie
    assert not os.path.lexists(link(root))
    assert list((root / "run" / "nbd").iterdir()) == []


def test_write_ticket_on_read_only_export_is_refused(
    root: Path, registry: Registry, volumes: Volumes
) -> None:
    reader = registry.add(ticket("t1", nbd=True))
    with pytest.raises(VolumeError) as e:
        registry.add(ticket("t2", ops=("write",), nbd=True))
    assert "read-only" in detail(e.value, "reason", str)
    # The reader keeps its export; the refused writer holds no reference.
    assert volumes.references(volume_of(reader.spec)) == 1
    assert len(qemu_nbd_pids(root)) == 1
    registry.remove("t1")
    # With the readers gone, a writer gets a writable export.
    registry.add(ticket("t2", ops=("write",), nbd=True))
    registry.remove("t2")
    assert qemu_nbd_pids(root) == []


def test_tickets_that_disagree_on_serving_are_refused(root: Path, registry: Registry) -> None:
    registry.add(ticket("t1"))
    with pytest.raises(VolumeError) as e:
        registry.add(ticket("t2", nbd=True))
    assert "qemu-nbd" in detail(e.value, "reason", str)
    registry.remove("t1")
    assert not os.path.lexists(link(root))


def test_failed_qemu_nbd_start_leaves_nothing(root: Path, registry: Registry) -> None:
    # The volume holds raw bytes: qemu-nbd refuses it as qcow2.
    with pytest.raises(VolumeError) as e:
        registry.add(ticket("t1", format="cow"))
    assert "qcow2" in detail(e.value, "reason", str)
    assert registry.list() == []
    assert not (root / "run" / "storage" / SD).exists()
    assert qemu_nbd_pids(root) == []
