"""Storage helpers of the VM lane: a block domain on loop devices, lvm calls."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import sanlock as sanlock_module

from storage.lvm import config
from vdsm_imageio import ticketspec
from vdsm_imageio.ticketspec import TicketSpec

MiB = 1024**2
LEASE_ALIGN = MiB  # sanlock resource size with 512-byte sectors
LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=LVM_ENV, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}")
    return proc


def lvm(
    *argv: str, devices: tuple[str, ...] = (), check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run("lvm", argv[0], "--config", config(devices), *argv[1:], check=check)


class Domain:
    """A block storage domain on loop devices."""

    def __init__(
        self, tmp: Path, sd_id: str, size: int = 512 * MiB, pvs: int = 2, sanlock: bool = True
    ) -> None:
        self.sd_id = sd_id
        self.loops: list[str] = []
        self.files: list[Path] = []
        self._tmp = tmp
        self._size = size
        self._slots = itertools.count(1)
        try:
            for _ in range(pvs):
                self._add_loop()
            lvm("pvcreate", "-q", *self.loops, devices=tuple(self.loops))
            lvm("vgcreate", "-q", sd_id, *self.loops, devices=tuple(self.loops))
            if sanlock:
                self.ids = self.create_lv("ids", 8, active=True)
                self.leases = self.create_lv("leases", 64, active=True)
        except BaseException:
            self.remove()
            raise

    def _add_loop(self) -> str:
        f = self._tmp / f"{self.sd_id}-pv{len(self.files)}"
        self.files.append(f)
        f.touch()
        os.truncate(f, self._size)
        loop = run("losetup", "--find", "--show", str(f)).stdout.strip()
        self.loops.append(loop)
        return loop

    def extend(self) -> str:
        """Add a new physical volume, as vdsm does when a domain grows."""
        loop = self._add_loop()
        lvm("pvcreate", "-q", loop, devices=(loop,))
        lvm("vgextend", "-q", self.sd_id, loop, devices=self.devices)
        return loop

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.loops)

    def create_lv(
        self,
        name: str,
        size_mib: int,
        *,
        tag: str | None = None,
        active: bool = False,
        on: str | None = None,
    ) -> str:
        args = ["lvcreate", "-q", "-n", name, "-L", f"{size_mib}m", "-y"]
        # An inactive LV cannot be zeroed; tests write what they read.
        args += ["-ay"] if active else ["-an", "-Zn"]
        if tag:
            args += ["--addtag", tag]
        lvm(*args, self.sd_id, *([on] if on else []), devices=self.devices)
        return f"/dev/{self.sd_id}/{name}"

    def remove_lv(self, name: str) -> None:
        lvm("lvremove", "-q", "-f", f"{self.sd_id}/{name}", devices=self.devices)

    def lease_slot(self) -> int:
        return next(self._slots) * LEASE_ALIGN

    def remove(self) -> None:
        if self.loops:
            lvm("vgremove", "-q", "-f", self.sd_id, devices=self.devices, check=False)
            lvm("pvremove", "-q", *self.loops, devices=self.devices, check=False)
        for loop in self.loops:
            run("losetup", "-d", loop, check=False)
        for f in self.files:
            f.unlink(missing_ok=True)


def dm_name(vg: str, lv: str) -> str:
    # device-mapper names double the dashes inside the VG and LV names.
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def attr(domain: Domain, lv: str) -> str:
    out = lvm(
        "lvs", "--noheadings", "-o", "lv_attr", f"{domain.sd_id}/{lv}", devices=domain.devices
    ).stdout
    return out.strip()


def is_active(domain: Domain, lv: str) -> bool:
    return attr(domain, lv)[4] == "a"


def spec(
    volume: dict[str, Any], *, ops: tuple[str, ...] = ("read",), ticket: str | None = None
) -> TicketSpec:
    return ticketspec.parse(
        {
            "uuid": ticket or str(uuid.uuid4()),
            "size": 8 * MiB,
            "ops": list(ops),
            "timeout": 300,
            "transfer_id": f"t-{uuid.uuid4().hex[:8]}",
            "volume": volume,
        },
        default_inactivity_timeout=60,
    )


class LeaseHolder:
    """Another process holding a volume's lease, like a second host's user."""

    def __init__(self, volume: dict[str, Any]) -> None:
        lease = volume["lease"]
        # Without site (-S) Python starts in a fraction of the time in the
        # guest; the binding is all it needs.
        env = dict(os.environ, PYTHONPATH=os.path.dirname(str(sanlock_module.__file__)))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-S",
                str(Path(__file__).with_name("lease_holder.py")),
                volume["sd_id"],
                volume["vol_id"],
                lease["path"],
                str(lease["offset"]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "acquired":
            self.stop()
            raise AssertionError(f"lease holder failed: {line!r}")

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> LeaseHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sanlock_status() -> str:
    return run("sanlock", "client", "status").stdout


def holds(status: str, sd_id: str, vol_id: str) -> bool:
    return any(line.startswith(f"r {sd_id}:{vol_id}:") for line in status.splitlines())
