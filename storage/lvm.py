"""LVM commands for block storage domains.

A block domain is a volume group named after the domain (``sd_id``); each
volume is a logical volume named after ``vol_id``, tagged ``IU_<img_id>``
with its image.

Rules:
- ``lvm`` runs as an argv list, never through a shell, with a ``--config``
  that shows LVM only the domain's physical volumes (learned once with
  ``pvs`` and refreshed when a command misses the volume group), ignores
  the devices file, udev's device list, the persistent cache and hints,
  and never scans inside logical volumes (guest disks hold their own VGs).
- Reports are read as ``--reportformat json`` and parsed by pure functions.
- Failures are translated here, once: a missing VG is DomainNotFound, a
  missing LV VolumeNotFound, anything else VolumeError carrying LVM's
  stderr in ``reason`` (the JSON-RPC ``data``).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vdsm_imageio.errors import (
    DomainNotFound,
    ImageioError,
    VolumeError,
    VolumeNotFound,
)

log = logging.getLogger(__name__)

LV_FIELDS = "vg_name,lv_name,lv_size,lv_attr,lv_path,lv_tags"
# Only what a report needs; the rest of lvm.conf stays the host's.
_DEVICES_CONFIG = (
    'obtain_device_list_from_udev=0 write_cache_state=0 hints="none" use_devicesfile=0 scan_lvs=0'
)
_VG_MISSING = re.compile(r'Volume group "[^"]*" not found')
_LV_MISSING = re.compile(r"Failed to find logical volume")
_IN_USE = re.compile(r"\bin use\b")
# Device names we put in a filter; other characters would need escaping
# through both LVM's config strings and its regular expressions.
_DEVICE_RE = re.compile(r"^/[A-Za-z0-9/_.:+@=,-]+$")


@dataclass(frozen=True)
class LogicalVolume:
    vg_name: str
    name: str
    size: int
    attr: str
    path: str
    tags: tuple[str, ...]

    @property
    def active(self) -> bool:
        # lv_attr[4] is the state: "a" active; "X" unknown, which is what a
        # device whose table was swapped for the error target reports.
        return self.attr[4:5] == "a"

    @property
    def open(self) -> bool:
        return self.attr[5:6] == "o"

    @property
    def image(self) -> str | None:
        for tag in self.tags:
            if tag.startswith("IU_"):
                return tag[3:]
        return None


# Pure core.


def config(devices: Sequence[str]) -> str:
    """The --config that limits LVM to devices (all of them when empty)."""
    accept = [f'"a|^{_literal(d)}$|"' for d in devices]
    filters = ", ".join([*accept, '"r|.*|"']) if devices else '"a|.*|"'
    return f"devices {{ filter=[{filters}] {_DEVICES_CONFIG} }}"


def _literal(device: str) -> str:
    if not _DEVICE_RE.match(device):
        raise ValueError(f"unsupported device name {device!r}")
    # A one-character class matches the character itself, without escapes.
    return "".join(c if c.isalnum() or c in "/_-" else f"[{c}]" for c in device)


def parse_report(stdout: str, kind: str) -> list[dict[str, str]]:
    """The rows of an lvm --reportformat json report of kind "lv" or "pv"."""
    try:
        doc = json.loads(stdout)
        rows: list[dict[str, str]] = []
        for section in doc["report"]:
            rows.extend(section.get(kind, []))
        return rows
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"malformed lvm {kind} report: {e}") from None


def parse_lv(row: dict[str, str]) -> LogicalVolume:
    tags = row.get("lv_tags", "")
    return LogicalVolume(
        vg_name=row["vg_name"],
        name=row["lv_name"],
        size=int(row["lv_size"]),
        attr=row["lv_attr"],
        path=row["lv_path"],
        tags=tuple(t for t in tags.split(",") if t),
    )


def devices_of(rows: list[dict[str, Any]], vg: str) -> tuple[str, ...]:
    return tuple(sorted(r["pv_name"] for r in rows if r.get("vg_name") == vg))


def translate(*, action: str, vg: str, lv: str, rc: int, stderr: str) -> ImageioError:
    """The domain error for a failed lvm command."""
    message = " ".join(line.strip() for line in stderr.splitlines() if line.strip())
    if _VG_MISSING.search(stderr):
        return DomainNotFound(sd_id=vg, img_id="-", vol_id=lv, reason="no such volume group")
    if _LV_MISSING.search(stderr):
        return VolumeNotFound(sd_id=vg, img_id="-", vol_id=lv)
    if action == "deactivate" and _IN_USE.search(stderr):
        message = f"the device is open elsewhere ({message})"
    return VolumeError(
        action=action, sd_id=vg, vol_id=lv, reason=message or f"lvm exit code {rc}", rc=rc
    )


# I/O shell.


class Lvm:
    def __init__(self, *, command: str = "lvm", timeout: float = 120.0) -> None:
        self._command = command
        self._timeout = timeout
        # Devices of each domain; domains are few and rarely grow.
        self._devices: dict[str, tuple[str, ...]] = {}

    def devices(self, vg: str) -> tuple[str, ...]:
        """The physical volumes backing vg, from a scan of every device."""
        out = self._run(
            "scan", vg, "", ["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"], devices=()
        )
        found = devices_of(parse_report(out, "pv"), vg)
        if not found:
            raise DomainNotFound(
                sd_id=vg,
                img_id="-",
                vol_id=None,
                reason="no physical volume holds its volume group",
            )
        self._devices[vg] = found
        return found

    def lv_info(self, vg: str, lv: str) -> LogicalVolume:
        out = self._domain(
            "inspect",
            vg,
            lv,
            [
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                LV_FIELDS,
                f"{vg}/{lv}",
            ],
        )
        rows = parse_report(out, "lv")
        if not rows:
            raise VolumeNotFound(sd_id=vg, img_id="-", vol_id=lv)
        return parse_lv(rows[0])

    def activate(self, vg: str, lv: str) -> LogicalVolume:
        """Activate vg/lv, or refresh it if active (another host may have
        extended it). Returns the volume as found before: its ``active``
        says whether this call activated it or only refreshed it."""
        info = self.lv_info(vg, lv)
        if info.active:
            self._domain("refresh", vg, lv, ["lvchange", "--refresh", f"{vg}/{lv}"])
        else:
            self._domain("activate", vg, lv, ["lvchange", "--available", "y", f"{vg}/{lv}"])
        log.info("ACTIVATE vg=%s lv=%s size=%d refreshed=%s", vg, lv, info.size, info.active)
        return info

    def deactivate(self, vg: str, lv: str) -> None:
        self._domain("deactivate", vg, lv, ["lvchange", "--available", "n", f"{vg}/{lv}"])
        log.info("DEACTIVATE vg=%s lv=%s", vg, lv)

    def _domain(self, action: str, vg: str, lv: str, args: list[str]) -> str:
        devices = self._devices.get(vg) or self.devices(vg)
        try:
            return self._run(action, vg, lv, args, devices=devices)
        except (DomainNotFound, VolumeError):
            # The VG may have grown or moved to other devices since we
            # learned them (LVM then reports it missing or partial).
            fresh = self.devices(vg)
            if fresh == devices:
                raise
            return self._run(action, vg, lv, args, devices=fresh)

    def _run(
        self, action: str, vg: str, lv: str, args: list[str], *, devices: Sequence[str]
    ) -> str:
        argv = [self._command, args[0], "--config", config(devices), *args[1:]]
        log.debug("LVM argv=%s", argv)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self._timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise VolumeError(
                action=action,
                sd_id=vg,
                vol_id=lv,
                reason=f"lvm {args[0]} timed out after {self._timeout:.0f} seconds",
            ) from None
        except OSError as e:
            raise VolumeError(
                action=action, sd_id=vg, vol_id=lv, reason=f"cannot run lvm: {e.strerror}"
            ) from None
        if proc.returncode != 0:
            error = translate(action=action, vg=vg, lv=lv, rc=proc.returncode, stderr=proc.stderr)
            log.warning(
                "LVM failed action=%s vg=%s lv=%s rc=%d stderr=%r",
                action,
                vg,
                lv,
                proc.returncode,
                proc.stderr.strip(),
            )
            raise error
        return proc.stdout
