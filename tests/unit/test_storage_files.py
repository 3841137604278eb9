"""File domains and run-directory links, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.files import find_volume
from storage.links import Links
from tests.support.errors import detail
from vdsm_imageio.errors import (
    DomainNotFound,
    ImageNotFound,
    VolumeError,
    VolumeNotFound,
)
from vdsm_imageio.ticketspec import Volume

SD, IMG, VOL = "sd-1", "img-1", "vol-1"
VOLUME = Volume(domain="file", sd_id=SD, img_id=IMG, vol_id=VOL)


def make_volume(root: Path, mount: str = "server:_export") -> Path:
    image = root / mount / SD / "images" / IMG
    image.mkdir(parents=True)
    path = image / VOL
    path.write_bytes(b"data")
    return path


def test_finds_volume_under_any_mount(tmp_path: Path) -> None:
    (tmp_path / "other:_export").mkdir()
    path = make_volume(tmp_path)
    assert find_volume(tmp_path, VOLUME) == path


def test_unmounted_domain_is_domain_not_found(tmp_path: Path) -> None:
    with pytest.raises(DomainNotFound) as e:
        find_volume(tmp_path, VOLUME)
    assert e.value.fields["sd_id"] == SD
    assert "not mounted" in str(e.value)


def test_missing_image_is_image_not_found(tmp_path: Path) -> None:
    (tmp_path / "m" / SD / "images").mkdir(parents=True)
    with pytest.raises(ImageNotFound) as e:
        find_volume(tmp_path, VOLUME)
    assert e.value.fields["img_id"] == IMG


def test_missing_volume_is_volume_not_found(tmp_path: Path) -> None:
    make_volume(tmp_path).unlink()
    with pytest.raises(VolumeNotFound) as e:
        find_volume(tmp_path, VOLUME)
    assert type(e.value) is VolumeNotFound
    assert str(e.value) == f"Volume {VOL} of image {IMG} not found in domain {SD}"


def test_volume_that_is_not_a_regular_file_is_volume_error(tmp_path: Path) -> None:
    path = make_volume(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(VolumeError) as e:
        find_volume(tmp_path, VOLUME)
    assert "not a regular file" in detail(e.value, "reason", str)


def test_domain_in_two_mounts_uses_the_first_by_name(tmp_path: Path) -> None:
    first = make_volume(tmp_path, "a:_export")
    make_volume(tmp_path, "b:_export")
    assert find_volume(tmp_path, VOLUME) == first


def test_link_points_at_target_under_run_dir(tmp_path: Path) -> None:
    target = make_volume(tmp_path / "mnt")
    links = Links(tmp_path / "run")
    link = links.create(VOLUME, str(target))
    assert link == tmp_path / "run" / "storage" / SD / IMG / VOL
    assert os.readlink(link) == str(target)
    assert link.read_bytes() == b"data"


def test_link_replaces_stale_link(tmp_path: Path) -> None:
    links = Links(tmp_path / "run")
    links.create(VOLUME, "/stale/target")
    link = links.create(VOLUME, "/new/target")
    assert os.readlink(link) == "/new/target"


def test_remove_prunes_empty_directories_only(tmp_path: Path) -> None:
    links = Links(tmp_path / "run")
    other = Volume(domain="file", sd_id=SD, img_id="img-2", vol_id=VOL)
    links.create(VOLUME, "/a")
    links.create(other, "/b")
    links.remove(VOLUME)
    assert not (tmp_path / "run" / "storage" / SD / IMG).exists()
    assert os.path.lexists(links.path(other))
    links.remove(other)
    assert list((tmp_path / "run" / "storage").iterdir()) == []


def test_remove_of_missing_link_is_a_no_op(tmp_path: Path) -> None:
    Links(tmp_path / "run").remove(VOLUME)
