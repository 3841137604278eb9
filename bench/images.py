"""The test images, created once per size on disk and reused by later
runs (the fast profile gets copies on its own file system, holes kept).

- full: every byte written with incompressible data (AES-CTR keystream
  under a random key: as random as os.urandom, several times faster);
- sparse: 25% data in runs (64 MiB runs every 256 MiB for images of 1 GiB
  and more, proportionally smaller runs for the tiny smoke images);
- qcow2: the full image converted to qcow2, for the nbd rows.

An image is written under a temporary name and renamed when complete, so
an interrupted run never leaves a short image that a later run trusts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MiB = 1024**2
GiB = 1024**3
CHUNK = 8 * MiB


@dataclass(frozen=True)
class Images:
    full: Path
    sparse: Path
    qcow2: Path
    size: int
    sparse_data: int


def ensure(cache: Path, size: int) -> Images:
    cache.mkdir(parents=True, exist_ok=True)
    tag = size_tag(size)
    full = cache / f"full-{tag}.raw"
    sparse = cache / f"sparse-{tag}.raw"
    qcow2 = cache / f"full-{tag}.qcow2"
    run, period = sparse_layout(size)
    if not full.exists():
        _create(full, lambda f: _write_random(f, 0, size))
    if not sparse.exists():
        _create(sparse, lambda f: _write_sparse(f, size, run, period))
    if not qcow2.exists():
        tmp = qcow2.with_suffix(".tmp")
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(full), str(tmp)], check=True
        )
        tmp.rename(qcow2)
    data = sum(min(run, size - start) for start in range(0, size, period))
    return Images(full=full, sparse=sparse, qcow2=qcow2, size=size, sparse_data=data)


def copy(images: Images, dest: Path) -> Images:
    """The same images under dest (another profile's storage), holes kept."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in (images.full, images.sparse, images.qcow2):
        dst = dest / src.name
        subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        paths.append(dst)
    full, sparse, qcow2 = paths
    return Images(
        full=full, sparse=sparse, qcow2=qcow2, size=images.size, sparse_data=images.sparse_data
    )


def sparse_layout(size: int) -> tuple[int, int]:
    """(data run, period): 64 MiB of every 256 MiB, scaled down for tiny images."""
    run = 64 * MiB if size >= GiB else max(64 * 1024, (size // 16) // 65536 * 65536)
    return run, 4 * run


def size_tag(size: int) -> str:
    for unit, name in ((GiB, "G"), (MiB, "M")):
        if size % unit == 0:
            return f"{size // unit}{name}"
    return str(size)


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 1024, "M": MiB, "G": GiB}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def _create(path: Path, fill: Callable[[BinaryIO], None]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        fill(f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


def _write_random(f: BinaryIO, start: int, length: int) -> None:
    cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
    enc = cipher.encryptor()
    zeros = bytes(CHUNK)
    f.seek(start)
    left = length
    while left:
        n = min(CHUNK, left)
        f.write(enc.update(zeros[:n]))
        left -= n


def _write_sparse(f: BinaryIO, size: int, run: int, period: int) -> None:
    f.truncate(size)
    for start in range(0, size, period):
        _write_random(f, start, min(run, size - start))


class Scratch:
    """Client-side files on tmpfs, so client I/O never competes with the
    daemon for the disk: the upload source and download destinations."""

    def __init__(self, images: Images, base: Path = Path("/dev/shm")) -> None:
        need = 2 * images.size + 256 * MiB
        self.on_tmpfs = base.is_dir() and shutil.disk_usage(base).free > need
        root = base if self.on_tmpfs else images.full.parent
        self.dir = root / f"vdsm-bench-{os.getpid()}"
        self.dir.mkdir()
        self.upload_source = self.dir / "source.raw"
        if self.on_tmpfs:
            shutil.copyfile(images.full, self.upload_source)
        else:
            self.upload_source.symlink_to(images.full)

    def path(self, name: str) -> Path:
        return self.dir / name

    def discard(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def describe(self) -> str:
        where = "tmpfs (/dev/shm)" if self.on_tmpfs else "the image disk (no room on /dev/shm)"
        return f"client-side files (upload source, client download targets) on {where}"
