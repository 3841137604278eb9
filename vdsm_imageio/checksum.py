"""Block checksums of an image: the rules, without I/O.

The checksum of an image is the same as ovirt-imageio computes (its
client's ``checksum()`` and its ``/checksum`` resource), so a client can
compare what it has with what the host has:

- the image is cut into blocks of ``block_size`` bytes, the last one
  shorter when the size is not a multiple;
- each block is hashed alone with the algorithm (blake2b and blake2s with
  a 32-byte digest, every other algorithm at its natural size);
- the checksum is the same algorithm over the block digests, in order;
- the image is what qemu sees: a size that is not a multiple of 512 bytes
  is rounded up with zeros (ovirt-imageio's client reads images through
  qemu-nbd, which exports whole sectors).

A block digest depends only on the block's bytes, so a block that reads as
zeros (a hole or zero extent, or read data that is all zeros) takes the
digest of a zero block, computed once per algorithm and length. Reading is
planned from the zero extents: only data is read, rounded out to the I/O
alignment (a zero extent reads as zeros, so reading a little of it changes
nothing). The threads that read and hash live in ``checksum_io``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .errors import BadRequest

KiB = 1024
MiB = 1024**2

DEFAULT_ALGORITHM = "blake2b"
DEFAULT_BLOCK_SIZE = 4 * MiB
# Bounds keep one request from pinning much memory or hashing tiny blocks;
# blocks are whole 4 KiB pages so reads stay aligned for O_DIRECT.
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 16 * MiB
BLOCK_ALIGNMENT = 4096
# qemu gives raw images a whole number of sectors.
SECTOR = 512
# blake2b and blake2s take any digest size up to their maximum; 32 bytes
# is what ovirt-imageio uses for both, so the digests match.
BLAKE2_DIGEST_SIZE = 32


class HashObject(Protocol):
    """What hashlib's objects (and blake2b, typed apart) have in common."""

    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


HashFactory = Callable[[], HashObject]


class Extent(Protocol):
    """What the plan needs of a backend's zero extent."""

    @property
    def start(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def zero(self) -> bool: ...


# Algorithms.


def hash_factory(algorithm: str) -> HashFactory:
    """A constructor of empty hash objects for algorithm (a hashlib name)."""
    if algorithm == "blake2b":
        return lambda: hashlib.blake2b(digest_size=BLAKE2_DIGEST_SIZE)
    if algorithm == "blake2s":
        return lambda: hashlib.blake2s(digest_size=BLAKE2_DIGEST_SIZE)
    return lambda: hashlib.new(algorithm)


def algorithms() -> list[str]:
    """Sorted names of hashlib's algorithms that the block scheme can use.

    Excluded: the shake_* functions, whose digest needs a length that the
    scheme does not define (ovirt-imageio fails on them); OpenSSL's other
    blake2 names (blake2b512 ...), which take no digest size; and anything
    this host's OpenSSL refuses to run (a FIPS policy blocks md5).
    """
    return sorted(name for name in hashlib.algorithms_available if _usable(name))


def _usable(name: str) -> bool:
    if name.startswith("shake_"):
        return False
    if name.startswith("blake2") and name not in ("blake2b", "blake2s"):
        return False
    try:
        h = hash_factory(name)()
        h.update(b"\0")
        h.digest()
    except (ValueError, TypeError):
        return False
    return True


def parse_algorithm(value: str | None, available: Iterable[str]) -> str:
    if value is None:
        return DEFAULT_ALGORITHM
    if value not in available:
        raise BadRequest(
            field="query parameter 'algorithm'",
            reason=f"unknown algorithm {value!r}; see /images/<ticket>/checksum/algorithms",
        )
    return value


def parse_block_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_BLOCK_SIZE
    rule = f"expected a multiple of {BLOCK_ALIGNMENT} from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
    # ASCII digits only: int() would also take "+4096", " 4096" and "4_096".
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(field="query parameter 'block_size'", reason=f"{rule}, got {value!r}")
    size = int(value)
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size % BLOCK_ALIGNMENT:
        raise BadRequest(field="query parameter 'block_size'", reason=f"{rule}, got {size}")
    return size


# The plan.


@dataclass(frozen=True)
class Block:
    """One block of the image and the parts of it that must be read.

    ``data`` holds (start, length) pieces inside the block, in order; an
    empty ``data`` is a block that reads as zeros and is not read at all.
    """

    start: int
    length: int
    data: tuple[tuple[int, int], ...] = ()

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def zero(self) -> bool:
        return not self.data


@dataclass(frozen=True)
class Job:
    """Consecutive data blocks that one thread reads and hashes: several
    that fit one buffer together, or one block read a buffer at a time."""

    blocks: tuple[Block, ...]

    @property
    def start(self) -> int:
        return self.blocks[0].start

    @property
    def end(self) -> int:
        return self.blocks[-1].end

    @property
    def length(self) -> int:
        return self.end - self.start


def data_runs(extents: Iterable[Extent], size: int, align: int) -> Iterator[tuple[int, int]]:
    """Merged (start, end) runs to read in [0, size), rounded out to align.

    Anything no extent reports as zero is read: a gap in the extents is
    never assumed to be zeros.
    """
    pos = 0
    run: tuple[int, int] | None = None

    def data(start: int, end: int) -> Iterator[tuple[int, int]]:
        nonlocal run
        start = start // align * align
        end = min(size, -(-end // align) * align)
        if run is not None and start <= run[1]:
            run = (run[0], max(run[1], end))
            return
        if run is not None:
            yield run
        run = (start, end)

    for ext in extents:
        start, end = max(ext.start, pos), min(ext.start + ext.length, size)
        if start > pos:
            yield from data(pos, start)
        if end <= start:
            continue
        if not ext.zero:
            yield from data(start, end)
        pos = end
        if pos >= size:
            break
    if pos < size:
        yield from data(pos, size)
    if run is not None:
        yield run


def checksum_size(size: int) -> int:
    """The length a checksum covers for an image of size bytes."""
    return -(-size // SECTOR) * SECTOR


def plan(extents: Iterable[Extent], size: int, block_size: int, align: int) -> Iterator[Block]:
    """The blocks of an image of size readable bytes, in order, each with
    the pieces of it to read; they cover ``checksum_size(size)``."""
    total = checksum_size(size)
    start = 0
    pieces: list[tuple[int, int]] = []
    for run_start, run_end in data_runs(extents, size, align):
        pos = run_start
        while pos < run_end:
            while pos >= start + block_size:
                yield Block(start, min(block_size, total - start), tuple(pieces))
                pieces = []
                start += block_size
            end = min(run_end, start + block_size)
            pieces.append((pos, end - pos))
            pos = end
    while start < total:
        yield Block(start, min(block_size, total - start), tuple(pieces))
        pieces = []
        start += block_size


def schedule(blocks: Iterable[Block], window: int) -> Iterator[Block | Job]:
    """Zero blocks as they are; runs of data blocks grouped into jobs of at
    most window bytes (a block longer than window is a job of its own)."""
    group: list[Block] = []
    for block in blocks:
        if block.zero:
            if group:
                yield Job(tuple(group))
                group = []
            yield block
            continue
        if group and block.end - group[0].start > window:
            yield Job(tuple(group))
            group = []
        group.append(block)
    if group:
        yield Job(tuple(group))


def windows(job: Job, window: int) -> Iterator[tuple[int, int]]:
    """The (start, length) reads of up to window bytes that cover job."""
    for start in range(job.start, job.end, window):
        yield start, min(window, job.end - start)


def pieces_in(job: Job, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The job's data pieces clipped to [start, end)."""
    for block in job.blocks:
        if block.end <= start or block.start >= end:
            continue
        for p_start, p_len in block.data:
            s, e = max(p_start, start), min(p_start + p_len, end)
            if s < e:
                yield s, e - s


# Digests.


_ZERO_CHUNK = bytes(64 * KiB)


def is_zero(buf: memoryview) -> bool:
    """Whether buf holds only zeros.

    Compares in small copies: bytes equality is a memcmp, while comparing
    memoryviews goes item by item, 15 times slower. Random data fails on
    the first chunk.
    """
    step = len(_ZERO_CHUNK)
    for pos in range(0, len(buf), step):
        chunk = buf[pos : pos + step]
        if chunk.tobytes() != _ZERO_CHUNK[: len(chunk)]:
            return False
    return True


class ZeroDigests:
    """Digests of all-zero blocks, by (algorithm, length); bounded.

    Hashing 16 MiB of zeros costs tens of milliseconds: the digest of a
    zero block of the default size is computed once, not per request.
    """

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._digests: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def get(self, algorithm: str, length: int) -> bytes:
        key = (algorithm, length)
        with self._lock:
            digest = self._digests.get(key)
            if digest is not None:
                self._digests.move_to_end(key)
                return digest
        h = hash_factory(algorithm)()
        zeros = memoryview(_ZERO_CHUNK)
        for pos in range(0, length, len(zeros)):
            h.update(zeros[: min(len(zeros), length - pos)])
        digest = h.digest()
        with self._lock:
            self._digests[key] = digest
            while len(self._digests) > self._capacity:
                self._digests.popitem(last=False)
        return digest


class BlockHash:
    """The digest of one block fed in order, in one or several pieces.

    Leading zero pieces are only counted: a block that ends up all zeros
    takes the precomputed digest and is never hashed (preallocated volumes
    and block devices report their zeros as data).
    """

    def __init__(self, new: HashFactory, zero_digest: Callable[[int], bytes]) -> None:
        self._new = new
        self._zero_digest = zero_digest
        self._h: HashObject | None = None
        self._zeros = 0

    def update(self, piece: memoryview) -> None:
        if self._h is None:
            if is_zero(piece):
                self._zeros += len(piece)
                return
            self._h = self._new()
            zeros = memoryview(_ZERO_CHUNK)
            while self._zeros:
                n = min(self._zeros, len(zeros))
                self._h.update(zeros[:n])
                self._zeros -= n
        self._h.update(piece)

    def digest(self) -> bytes:
        if self._h is None:
            return self._zero_digest(self._zeros)
        return self._h.digest()
