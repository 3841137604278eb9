"""storage.lvm's pure core, on reports and messages recorded from LVM 2.03."""

from __future__ import annotations

import pytest

from storage import lvm
from tests.support.errors import detail
from vdsm_imageio.errors import DomainNotFound, VolumeError, VolumeNotFound

VG = "6d9f1a7e-0000-4000-8000-000000000001"
LV = "11111111-2222-4333-8444-555555555555"
IMG = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"

# Recorded from lvm lvs/pvs --reportformat json --units b --nosuffix.
LVS = """\
  {
      "report": [
          {
              "lv": [
                  {"vg_name":"6d9f1a7e-0000-4000-8000-000000000001", \
"lv_name":"11111111-2222-4333-8444-555555555555", "lv_size":"8388608", \
"lv_attr":"-wi-a-----", \
"lv_path":"/dev/6d9f1a7e-0000-4000-8000-000000000001/11111111-2222-4333-8444-555555555555", \
"lv_tags":"IU_aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}
              ]
          }
      ]
  }
"""

PVS = """\
  {
      "report": [
          {
              "pv": [
                  {"pv_name":"/dev/loop0", "vg_name":"6d9f1a7e-0000-4000-8000-000000000001"},
                  {"pv_name":"/dev/loop2", "vg_name":"other"},
                  {"pv_name":"/dev/loop1", "vg_name":"6d9f1a7e-0000-4000-8000-000000000001"},
                  {"pv_name":"/dev/sdb", "vg_name":""}
              ]
          }
      ]
  }
"""

EMPTY_LVS = (
    '  {\n      "report": [\n          {\n              "lv": [\n'
    "              ]\n          }\n      ]\n  }\n"
)


def test_lvs_report_parses_into_logical_volume() -> None:
    (row,) = lvm.parse_report(LVS, "lv")
    lv = lvm.parse_lv(row)
    assert lv == lvm.LogicalVolume(
        vg_name=VG,
        name=LV,
        size=8 * 1024**2,
        attr="-wi-a-----",
        path=f"/dev/{VG}/{LV}",
        tags=(f"IU_{IMG}",),
    )
    assert lv.active and not lv.open
    assert lv.image == IMG


def test_empty_report_has_no_rows() -> None:
    assert lvm.parse_report(EMPTY_LVS, "lv") == []


@pytest.mark.parametrize("text", ["", "not json", '{"report": 3}', "[]"])
def test_malformed_report_is_an_error(text: str) -> None:
    with pytest.raises(ValueError):
        lvm.parse_report(text, "lv")


@pytest.mark.parametrize(
    "attr, active, open_",
    [
        ("-wi-a-----", True, False),
        ("-wi-ao----", True, True),
        ("-wi-------", False, False),
        # Table swapped for the error target while open (recorded after
        # dmsetup remove --force).
        ("-wi-XX--X-", False, False),
    ],
)
def test_attr_state_and_open_flags(attr: str, active: bool, open_: bool) -> None:
    lv = lvm.LogicalVolume(VG, LV, 0, attr, "", ())
    assert (lv.active, lv.open) == (active, open_)


def test_volume_without_image_tag_has_no_image() -> None:
    assert lvm.LogicalVolume(VG, LV, 0, "-wi-------", "", ("other",)).image is None


def test_devices_of_vg_are_its_pvs_sorted() -> None:
    rows = lvm.parse_report(PVS, "pv")
    assert lvm.devices_of(rows, VG) == ("/dev/loop0", "/dev/loop1")
    assert lvm.devices_of(rows, "missing") == ()


def test_config_accepts_only_the_domain_devices() -> None:
    config = lvm.config(["/dev/loop0", "/dev/mapper/3600a0b8.x+y"])
    assert 'filter=["a|^/dev/loop0$|", "a|^/dev/mapper/3600a0b8[.]x[+]y$|", "r|.*|"]' in config
    for setting in (
        "obtain_device_list_from_udev=0",
        "write_cache_state=0",
        'hints="none"',
        "use_devicesfile=0",
        "scan_lvs=0",
    ):
        assert setting in config


def test_config_without_devices_scans_all() -> None:
    assert 'filter=["a|.*|"]' in lvm.config([])


@pytest.mark.parametrize("device", ["dev/loop0", "/dev/a|b", '/dev/a"b', "/dev/a b"])
def test_config_refuses_device_names_it_cannot_quote(device: str) -> None:
    with pytest.raises(ValueError):
        lvm.config([device])


def test_missing_vg_is_domain_not_found() -> None:
    stderr = f'  Volume group "{VG}" not found\n  Cannot process volume group {VG}\n'
    error = lvm.translate(action="activate", vg=VG, lv=LV, rc=5, stderr=stderr)
    assert isinstance(error, DomainNotFound)
    assert error.fields["sd_id"] == VG


def test_missing_lv_is_volume_not_found() -> None:
    stderr = f'  Failed to find logical volume "{VG}/{LV}"\n'
    error = lvm.translate(action="activate", vg=VG, lv=LV, rc=5, stderr=stderr)
    assert type(error) is VolumeNotFound
    assert error.fields["vol_id"] == LV


def test_open_lv_at_deactivate_says_open_elsewhere() -> None:
    stderr = f"  Logical volume {VG}/{LV} in use.\n"
    error = lvm.translate(action="deactivate", vg=VG, lv=LV, rc=5, stderr=stderr)
    assert isinstance(error, VolumeError)
    assert error.fields["reason"] == (
        f"the device is open elsewhere (Logical volume {VG}/{LV} in use.)"
    )
    assert error.fields["rc"] == 5


def test_other_failure_carries_lvm_message() -> None:
    stderr = "  /dev/loop0: read failed: Input/output error\n  Failed to lock.\n"
    error = lvm.translate(action="activate", vg=VG, lv=LV, rc=5, stderr=stderr)
    assert type(error) is VolumeError
    assert error.fields["reason"] == ("/dev/loop0: read failed: Input/output error Failed to lock.")
    assert "Cannot activate volume" in str(error)


def test_silent_failure_names_exit_code() -> None:
    error = lvm.translate(action="activate", vg=VG, lv=LV, rc=3, stderr="")
    assert error.fields["reason"] == "lvm exit code 3"


def test_missing_lvm_command_is_volume_error() -> None:
    with pytest.raises(VolumeError) as e:
        lvm.Lvm(command="/nonexistent/lvm").lv_info(VG, LV)
    assert "cannot run lvm" in detail(e.value, "reason", str)
