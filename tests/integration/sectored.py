"""Images on storage with 512 and 4096-byte sectors, inside a daemon's directory.

Each is a file on ext4 made on a loop device of that logical sector size
(``losetup --sector-size``) and mounted under the daemon's images
directory, so direct I/O must align to the sector size and a ticket for it
needs nothing outside the daemon's directory.
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
def ext4_on_loop(directory: Path, name: str, *, sector_size: int) -> Iterator[Path]:
    """A mounted ext4 whose device has sector_size-byte sectors: directory/name."""
    backing = directory / f"{name}.fs"
    with open(backing, "wb") as f:
        f.truncate(FS_SIZE)
    try:
        device = run(
            "losetup",
            "--find",
            "--show",
            "--direct-io=on",
            f"--sector-size={sector_size}",
            str(backing),
        )
        try:
            run("mkfs.ext4", "-q", "-F", device)
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
