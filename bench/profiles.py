"""Where the bench keeps its images: the storage profiles.

- ``disk``: a directory on this machine's disk (``--dir``), where the
  images stay between runs. Both daemons mostly wait for that disk.
- ``fast``: an ext4 file system on a loop device whose backing file lives
  in /dev/shm, made for one run and removed after it. It reads several
  GB/s with O_DIRECT, as production NVMe, SAN or Ceph do, so the daemons'
  own costs decide the numbers instead of the disk.

Theory of operation for ``fast``: each step that makes something (the
backing file, the loop device, the mount point, the mount) registers its
undo before the next step starts, so a failure anywhere, Ctrl-C, or
SIGTERM (which ``bench.run`` turns into SystemExit) undoes exactly what
was made, newest first, in the ``finally`` of one context manager. The
undo runs with SIGINT and SIGTERM ignored: a second Ctrl-C while
unmounting must not strand a loop device. Only SIGKILL escapes; the
backing file's name carries the pid, so what is left can be told apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

MiB = 1024**2
GiB = 1024**3
PROFILES = ("disk", "fast")
SHM = Path("/dev/shm")
# What the daemons, clients and the rest of the machine keep besides the
# backing file: a tmpfs file is memory, and this machine has no swap.
MEMORY_HEADROOM = 1 * GiB
# ext4's journal and inode tables, qcow2 metadata.
FS_MARGIN = 256 * MiB
UMOUNT_RETRY_SECONDS = 10.0
CMD_TIMEOUT = 120.0


@dataclass(frozen=True)
class Storage:
    """One profile's storage: images and work files live under root."""

    name: str
    root: Path
    facts: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.name == "disk":
            return f"disk: images on {self.facts['fstype']} at {self.root}"
        return (
            f"fast: ext4 on {self.facts['device']}, backing file "
            f"{self.facts['backing']} ({self.facts['bytes'] // MiB} MiB, tmpfs)"
        )


def fast_bytes(size: int, sparse_data: int) -> int:
    """Backing file size for the images of one size: the full image, its
    qcow2 copy, the sparse image's data, and one file as large as an image
    at a time (an upload target, or dd's write reference), plus a tenth and
    the file system's own margin, rounded up to a MiB."""
    data = 3 * size + sparse_data
    need = data + data // 10 + FS_MARGIN
    return -(-need // MiB) * MiB


def shortage(need: int, shm_free: int, mem_available: int, shm: Path = SHM) -> str | None:
    """Why the fast profile cannot run here, or None."""
    if shm_free < need:
        return f"{shm} has {shm_free // MiB} MiB free, the fast profile needs {need // MiB} MiB"
    if mem_available < need + MEMORY_HEADROOM:
        return (
            f"{mem_available // MiB} MiB of memory available, the fast profile needs "
            f"{need // MiB} MiB in /dev/shm plus {MEMORY_HEADROOM // MiB} MiB for the rest"
        )
    return None


def room(need: int, base: Path = SHM) -> str | None:
    """shortage() of this machine now."""
    if not base.is_dir():
        return f"{base} does not exist"
    return shortage(need, shutil.disk_usage(base).free, mem_available(), base)


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def fstype(path: Path) -> str:
    out = _run(["stat", "-f", "-c", "%T", str(path)])
    return out.strip()


@contextlib.contextmanager
def disk(root: Path) -> Iterator[Storage]:
    root.mkdir(parents=True, exist_ok=True)
    kind = fstype(root)
    if kind == "tmpfs":
        raise RuntimeError(f"{root} is on tmpfs, which has no O_DIRECT: choose another --dir")
    yield Storage("disk", root, {"fstype": kind, "path": str(root)})


@contextlib.contextmanager
def fast(need: int, base: Path = SHM, mount_base: Path | None = None) -> Iterator[Storage]:
    """An ext4 file system of need bytes on a loop device backed by a file
    in base (tmpfs), mounted for the duration of the block."""
    undo = contextlib.ExitStack()
    backing = base / f"vdsm-bench-fast-{os.getpid()}.img"
    try:
        fd = os.open(backing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        undo.callback(_remove, backing)
        try:
            # Reserve the memory now: a run must not die of ENOSPC halfway.
            os.posix_fallocate(fd, 0, need)
        finally:
            os.close(fd)
        device = _run(["losetup", "--find", "--show", str(backing)]).strip()
        undo.callback(_detach, device, backing)
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                # Inode tables and journal written now, not by a kernel
                # thread during the measurements.
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                device,
            ]
        )
        mnt = Path(tempfile.mkdtemp(prefix="vdsm-bench-fast-", dir=mount_base))
        undo.callback(mnt.rmdir)
        _run(["mount", "-t", "ext4", "-o", "noatime", device, str(mnt)])
        undo.callback(_umount, mnt)
        log.info("FAST mounted device=%s mount=%s backing=%s bytes=%d", device, mnt, backing, need)
        yield Storage(
            "fast",
            mnt,
            {
                "fstype": "ext4",
                "device": device,
                "backing": str(backing),
                "mount": str(mnt),
                "bytes": need,
            },
        )
    finally:
        with _signals_held():
            undo.close()
        log.info("FAST removed backing=%s", backing)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _umount(mnt: Path) -> None:
    # A process that just exited (a daemon, qemu-nbd) may hold the file
    # system for a moment longer: EBUSY is retried, then the mount is
    # detached lazily so the loop device can go.
    deadline = time.monotonic() + UMOUNT_RETRY_SECONDS
    while True:
        done = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            log.warning("FAST umount busy mount=%s error=%s", mnt, done.stderr.strip())
            _run(["umount", "--lazy", str(mnt)])
            return
        time.sleep(0.2)


def _detach(device: str, backing: Path) -> None:
    # Only the device still bound to our file: the number may have been
    # freed and taken by someone else if an earlier step already let go.
    sysfs = Path("/sys/block") / Path(device).name / "loop" / "backing_file"
    try:
        bound = sysfs.read_text().strip()
    except FileNotFoundError:
        return
    if bound.removesuffix(" (deleted)") != str(backing):
        return
    _run(["losetup", "--detach", device])


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()[:300]}")
    return done.stdout
