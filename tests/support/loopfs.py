"""ext4 on loop devices, inside a daemon's directory, for tests that need
what only real storage does: a sector size of 512 or 4096 bytes
(``losetup --sector-size``, so direct I/O must align to it), a file system
that fills up, one that can be frozen. Mounted under the daemon's images
directory, an image on it needs nothing outside the daemon's directory.

Loop devices and mounts need root: ``needs_root()`` skips the test
otherwise. The bench does not import this module (it imports pytest).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CMD_TIMEOUT = 60
FS_SIZE = 64 * 1024**2


def run(*argv: str) -> str:
    return subprocess.run(
        argv, check=True, capture_output=True, text=True, timeout=CMD_TIMEOUT
    ).stdout.strip()


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for loop devices and mounts")


@contextlib.contextmanager
def ext4_on_loop(
    directory: Path,
    name: str,
    *,
    size: int = FS_SIZE,
    sector_size: int = 512,
    direct_io: bool = False,
    reserve: bool = True,
) -> Iterator[Path]:
    """A mounted ext4 of size bytes whose device has sector_size-byte
    sectors: directory/name. reserve=False leaves no blocks for root alone,
    so that root fills exactly size bytes."""
    backing = directory / f"{name}.fs"
    with open(backing, "wb") as f:
        f.truncate(size)
    try:
        device = run(
            "losetup",
            "--find",
            "--show",
            f"--direct-io={'on' if direct_io else 'off'}",
            f"--sector-size={sector_size}",
            str(backing),
        )
        try:
            run("mkfs.ext4", "-q", "-F", *([] if reserve else ["-m", "0"]), device)
            mountpoint = directory / name
            mountpoint.mkdir()
            run("mount", device, str(mountpoint))
            try:
                yield mountpoint
            finally:
                umount(mountpoint)
                mountpoint.rmdir()
        finally:
            run("losetup", "--detach", device)
    finally:
        backing.unlink()


def umount(mountpoint: Path) -> None:
    # The daemon closes an image just after its connection ends: retry EBUSY.
    deadline = time.monotonic() + 10
    while True:
        try:
            run("umount", str(mountpoint))
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
