"""The block checksum of a local image, equal to the server's ``/checksum``.

The rule (DESIGN section 11, as ovirt-imageio computes it): the image is
cut into blocks of ``block_size`` bytes (the last may be shorter); each
block is hashed alone (blake2b and blake2s with a 32-byte digest); the
checksum is the same algorithm over the block digests in order. A block
that reads as zeros has the digest of a zero block, computed once, so
holes are not read.

The image is the local file's guest data, extended with zeros to ``size``
(a disk larger than the uploaded image reads as zeros past its end).
Blocks are read and hashed on several threads (hashlib releases the GIL
on large buffers), and their digests fed to the root hash in order.
"""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from ..backends import DirtyExtent, ZeroExtent
from .local import Handle, LocalImage

MiB = 1024**2
DEFAULT_ALGORITHM = "blake2b"
DEFAULT_BLOCK_SIZE = 4 * MiB
BLAKE2_DIGEST_SIZE = 32
SECTOR = 512


class HashObject(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def hash_factory(algorithm: str) -> Callable[[], HashObject]:
    """An empty hash of the algorithm; ValueError for one hashlib lacks."""
    if algorithm in ("blake2b", "blake2s"):
        blake = hashlib.blake2b if algorithm == "blake2b" else hashlib.blake2s
        return lambda: blake(digest_size=BLAKE2_DIGEST_SIZE)
    hashlib.new(algorithm)
    return lambda: hashlib.new(algorithm)


@dataclass(frozen=True)
class Block:
    start: int
    length: int
    zero: bool


def blocks(
    extents: Sequence[ZeroExtent | DirtyExtent], size: int, block_size: int
) -> Iterator[Block]:
    """The blocks of [0, size); a block is zero when zero extents cover it
    whole. Past the extents the image reads as zeros."""
    zeros = [(e.start, e.start + e.length) for e in extents if e.zero]
    covered = extents[-1].start + extents[-1].length if extents else 0
    if covered < size:
        zeros.append((covered, size))
    i = 0
    for start in range(0, size, block_size):
        end = min(start + block_size, size)
        while i < len(zeros) and zeros[i][1] <= start:
            i += 1
        # Zero runs are merged by the extents' producer, but not always:
        # walk the adjacent ones.
        pos, j = start, i
        while j < len(zeros) and zeros[j][0] <= pos < zeros[j][1]:
            pos = zeros[j][1]
            j += 1
        yield Block(start, end - start, pos >= end)


def padded_size(size: int) -> int:
    """qemu shows a raw image as whole sectors, zeros at the end."""
    return (size + SECTOR - 1) // SECTOR * SECTOR


def compute(
    image: LocalImage,
    *,
    size: int,
    algorithm: str = DEFAULT_ALGORITHM,
    block_size: int = DEFAULT_BLOCK_SIZE,
    workers: int = 4,
) -> str:
    """The hex checksum of the image's guest data, zero-extended to size."""
    new = hash_factory(algorithm)
    zero_digests: dict[int, bytes] = {}

    def zero_digest(length: int) -> bytes:
        if length not in zero_digests:
            h = new()
            h.update(bytes(length))
            zero_digests[length] = h.digest()
        return zero_digests[length]

    handles: queue.SimpleQueue[tuple[Handle, memoryview]] = queue.SimpleQueue()
    opened: list[Handle] = []
    try:
        for _ in range(max(1, workers)):
            h = image.open()
            opened.append(h)
            handles.put((h, h.buffer(block_size)))
        extents = opened[0].zero_extents()
        zero_block = memoryview(bytes(block_size))

        def digest(block: Block) -> bytes:
            h, buf = handles.get()
            try:
                view = buf[: block.length]
                _read_block(h, image.size, block.start, view)
                # Data that reads as zeros: the digest is known.
                if view == zero_block[: block.length]:
                    return zero_digest(block.length)
                d = new()
                d.update(view)
                return d.digest()
            finally:
                handles.put((h, buf))

        root = new()
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="checksum") as ex:
            window: list[Future[bytes] | bytes] = []
            for block in blocks(extents, size, block_size):
                if block.zero:
                    window.append(zero_digest(block.length))
                else:
                    window.append(ex.submit(digest, block))
                while len(window) > 2 * workers:
                    root.update(_result(window.pop(0)))
            for item in window:
                root.update(_result(item))
        return root.hexdigest()
    finally:
        for h in opened:
            h.close()


def _result(item: Future[bytes] | bytes) -> bytes:
    return item if isinstance(item, bytes) else item.result()


def _read_block(h: Handle, image_size: int, start: int, view: memoryview) -> None:
    """Fill view with the image at start; zeros past the image's end."""
    pos = 0
    while pos < len(view):
        offset = start + pos
        if offset >= image_size:
            view[pos:] = bytes(len(view) - pos)
            return
        n = h.readinto(offset, view[pos : pos + min(len(view) - pos, image_size - offset)])
        if n == 0:
            view[pos:] = bytes(len(view) - pos)
            return
        pos += n
