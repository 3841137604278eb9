"""storage.lvm against real LVM and device-mapper."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.lvm import Lvm
from tests.support.errors import detail
from tests.vm.vmstorage import Domain, MiB, is_active, lvm
from vdsm_imageio.errors import DomainNotFound, VolumeError, VolumeNotFound

VolumeFactory = Callable[..., dict[str, Any]]


def test_devices_are_the_loop_devices_of_the_domain(domain: Domain) -> None:
    assert Lvm().devices(domain.sd_id) == tuple(sorted(domain.loops))


def test_filter_hides_volume_groups_on_other_devices(domain: Domain, tmp_path: Path) -> None:
    other = Domain(tmp_path, "other-domain", size=64 * MiB, pvs=1, sanlock=False)
    try:
        seen = lvm("vgs", "--noheadings", "-o", "vg_name", devices=domain.devices).stdout.split()
        assert seen == [domain.sd_id]
    finally:
        other.remove()


def test_volume_on_a_new_device_of_the_domain_is_found(tmp_path: Path) -> None:
    grown = Domain(tmp_path, "grown-domain", size=64 * MiB, pvs=1, sanlock=False)
    try:
        lvm_ = Lvm()
        assert lvm_.devices(grown.sd_id) == tuple(grown.loops)
        new = grown.extend()
        grown.create_lv("lv", 8, on=new)
        # The wrapper still filters on the old device, where the VG is
        # partial and LVM refuses to activate: it must rescan and retry.
        assert not lvm_.activate(grown.sd_id, "lv").active
        assert Path(f"/dev/{grown.sd_id}/lv").is_block_device()
        lvm_.deactivate(grown.sd_id, "lv")
    finally:
        grown.remove()


def test_activate_then_deactivate(domain: Domain, make_volume: VolumeFactory) -> None:
    vol = make_volume()
    before = Lvm().activate(domain.sd_id, vol["vol_id"])
    assert not before.active
    lv = Lvm().lv_info(domain.sd_id, vol["vol_id"])
    assert lv.active and not lv.open
    assert lv.size == 8 * MiB
    assert lv.image == vol["img_id"]
    assert Path(lv.path).is_block_device()
    Lvm().deactivate(domain.sd_id, vol["vol_id"])
    assert not is_active(domain, vol["vol_id"])
    assert not os.path.exists(lv.path)


def test_activate_an_active_volume_refreshes_it(domain: Domain, make_volume: VolumeFactory) -> None:
    vol = make_volume()
    lvm_ = Lvm()
    first = lvm_.activate(domain.sd_id, vol["vol_id"])
    second = lvm_.activate(domain.sd_id, vol["vol_id"])
    # The second call found it active: it refreshed instead.
    assert not first.active and second.active
    assert second.path == first.path
    lvm_.deactivate(domain.sd_id, vol["vol_id"])


def test_missing_volume_is_volume_not_found(domain: Domain) -> None:
    with pytest.raises(VolumeNotFound) as e:
        Lvm().activate(domain.sd_id, "00000000-0000-0000-0000-000000000000")
    assert type(e.value) is VolumeNotFound


def test_missing_domain_is_domain_not_found() -> None:
    with pytest.raises(DomainNotFound):
        Lvm().lv_info("11111111-0000-0000-0000-000000000000", "lv")


def test_deactivate_open_volume_says_open_elsewhere(
    domain: Domain, make_volume: VolumeFactory
) -> None:
    vol = make_volume()
    lvm_ = Lvm()
    lv = lvm_.activate(domain.sd_id, vol["vol_id"])
    fd = os.open(lv.path, os.O_RDONLY)
    try:
        assert lvm_.lv_info(domain.sd_id, vol["vol_id"]).open
        with pytest.raises(VolumeError) as e:
            lvm_.deactivate(domain.sd_id, vol["vol_id"])
        assert "open elsewhere" in detail(e.value, "reason", str)
        assert "in use" in detail(e.value, "reason", str)
        assert is_active(domain, vol["vol_id"])
    finally:
        os.close(fd)
    lvm_.deactivate(domain.sd_id, vol["vol_id"])
