"""The checksum's threads, over in-memory images: same digest as the plain
rule for every shape of plan, zeros never read, progress in order, cancel
and errors stop every worker and return every buffer."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from vdsm_imageio import checksum, checksum_io
from vdsm_imageio.backends import ZeroExtent
from vdsm_imageio.errors import BackendError, TicketCanceled
from vdsm_imageio.pipeline import BufferPool

KiB = 1024
MiB = 1024**2
PAGE = 4096


def plain_checksum(data: bytes, block_size: int, algorithm: str) -> str:
    data += bytes(-len(data) % 512)  # qemu's view: whole sectors
    new = checksum.hash_factory(algorithm)
    root = new()
    for pos in range(0, len(data), block_size):
        h = new()
        h.update(data[pos : pos + block_size])
        root.update(h.digest())
    return root.hexdigest()


def checksum_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("io-checksum")]


class Image:
    """Bytes with holes, the zero extents a file system would report, and
    a log of every read."""

    def __init__(self, size: int, runs: list[tuple[int, int]], seed: int = 0) -> None:
        rnd = random.Random(seed)
        self.data = bytearray(size)
        for start, length in runs:
            self.data[start : start + length] = rnd.randbytes(length)
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.data)

    def extents(self) -> list[ZeroExtent]:
        """Page-granular, like SEEK_DATA/SEEK_HOLE."""
        out: list[ZeroExtent] = []
        for pos in range(0, self.size, PAGE):
            length = min(PAGE, self.size - pos)
            hole = not any(self.data[pos : pos + length])
            last = out[-1] if out else None
            if last is not None and last.zero == hole:
                out[-1] = ZeroExtent(last.start, last.length + length, zero=hole, hole=hole)
            else:
                out.append(ZeroExtent(pos, length, zero=hole, hole=hole))
        return out

    def read(self, offset: int, buf: memoryview) -> None:
        with self._lock:
            self.reads.append((offset, len(buf)))
        buf[:] = self.data[offset : offset + len(buf)]


def run(
    image: Image,
    *,
    block_size: int = MiB,
    algorithm: str = "blake2b",
    buffer_size: int = MiB,
    lanes: int = 2,
    pool: BufferPool | None = None,
    readers: list[checksum_io.ReadAt] | None = None,
    progress: Callable[[int], None] | None = None,
    extents: list[ZeroExtent] | None = None,
) -> str:
    zero = checksum.ZeroDigests()
    return checksum_io.compute(
        checksum.plan(
            image.extents() if extents is None else extents, image.size, block_size, PAGE
        ),
        new=checksum.hash_factory(algorithm),
        zero_digest=lambda n: zero.get(algorithm, n),
        readers=readers or [image.read],
        pool=pool or BufferPool(buffer_size, 8),
        lanes=lanes,
        progress=progress or (lambda n: None),
    )


SIZE = 9 * MiB + 4097
RUNS = [
    (0, 4096),
    (MiB + 512, 3 * MiB - 1000),
    (5 * MiB, 1),
    (6 * MiB + 100, MiB),
    (SIZE - 5000, 5000),
]


@pytest.mark.parametrize("lanes", [1, 2, 3])
@pytest.mark.parametrize("buffer_size", [256 * KiB, MiB, 4 * MiB])
@pytest.mark.parametrize("block_size", [MiB, 2 * MiB, 4 * MiB])
def test_digest_equals_the_plain_rule(lanes: int, buffer_size: int, block_size: int) -> None:
    image = Image(SIZE, RUNS)
    got = run(image, block_size=block_size, buffer_size=buffer_size, lanes=lanes)
    assert got == plain_checksum(bytes(image.data), block_size, "blake2b")


@pytest.mark.parametrize("algorithm", ["blake2s", "sha1", "sha256", "md5", "sha3_256"])
def test_digest_equals_the_plain_rule_for_other_algorithms(algorithm: str) -> None:
    image = Image(SIZE, RUNS)
    assert run(image, algorithm=algorithm) == plain_checksum(bytes(image.data), MiB, algorithm)


def test_holes_are_never_read() -> None:
    image = Image(8 * MiB, [(MiB, 4096), (5 * MiB + 8192, 12288)])
    run(image, block_size=4 * MiB, buffer_size=4 * MiB)
    assert sorted(image.reads) == [(MiB, 4096), (5 * MiB + 8192, 12288)]


def test_every_read_is_page_aligned_but_the_last() -> None:
    image = Image(SIZE, RUNS)
    run(image, lanes=3)
    for offset, length in image.reads:
        assert offset % PAGE == 0
        assert length % PAGE == 0 or offset + length == SIZE


def test_a_fully_zero_image_reads_nothing() -> None:
    image = Image(64 * MiB + 1, [])
    assert run(image) == plain_checksum(bytes(image.data), MiB, "blake2b")
    assert image.reads == []


def test_zeros_reported_as_data_give_the_same_digest() -> None:
    # A preallocated volume or a block device reports its zeros as data.
    image = Image(SIZE, RUNS)
    everything = [ZeroExtent(0, SIZE, zero=False, hole=False)]
    got = run(image, extents=everything, buffer_size=256 * KiB, block_size=MiB)
    assert got == plain_checksum(bytes(image.data), MiB, "blake2b")
    assert sum(n for _, n in image.reads) == SIZE


def test_progress_reports_every_block_in_order() -> None:
    image = Image(SIZE, RUNS)
    seen: list[int] = []
    run(image, progress=seen.append, lanes=3, buffer_size=256 * KiB)
    assert seen == [MiB] * 9 + [4608]


def test_shared_reader_and_private_readers_agree() -> None:
    image = Image(SIZE, RUNS)
    other = Image(SIZE, RUNS)
    got = run(image, readers=[image.read, other.read], lanes=2)
    assert got == plain_checksum(bytes(image.data), MiB, "blake2b")
    assert image.reads and other.reads


def test_progress_error_stops_workers_and_returns_buffers() -> None:
    image = Image(64 * MiB, [(0, 64 * MiB)])
    pool = BufferPool(MiB, 4)
    calls = 0

    def progress(n: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TicketCanceled(transfer_id="t")

    with pytest.raises(TicketCanceled):
        run(image, pool=pool, progress=progress, lanes=2)
    assert not checksum_threads()
    # Two workers per lane, a buffer each; two jobs per worker at most in
    # flight: the rest of the image was never read.
    assert pool.allocated() == 4
    assert len(image.reads) <= 3 + 2 * 4
    assert [pool.try_acquire() for _ in range(4)].count(None) == 0


def test_read_error_is_raised_and_workers_joined() -> None:
    image = Image(16 * MiB, [(0, 16 * MiB)])
    pool = BufferPool(MiB, 4)

    def failing(offset: int, buf: memoryview) -> None:
        if offset >= 5 * MiB:
            raise BackendError(reason="read failed: Input/output error")
        image.read(offset, buf)

    with pytest.raises(BackendError):
        run(image, pool=pool, readers=[failing], lanes=2)
    assert not checksum_threads()
    assert [pool.try_acquire() for _ in range(4)].count(None) == 0


def test_empty_pool_runs_on_a_private_buffer() -> None:
    image = Image(SIZE, RUNS)
    pool = BufferPool(MiB, 1)
    held = pool.try_acquire()
    assert held is not None
    got = run(image, pool=pool)
    assert got == plain_checksum(bytes(image.data), MiB, "blake2b")
    assert pool.try_acquire() is None  # only the held one exists, still held
    pool.release(held)


def test_hashing_runs_on_several_threads_at_once() -> None:
    # Two jobs meet inside the reader: only possible if two workers run.
    image = Image(8 * MiB, [(0, 8 * MiB)])
    inside = threading.Barrier(2, timeout=10)

    def read(offset: int, buf: memoryview) -> None:
        if offset < 2 * MiB:
            inside.wait()
        image.read(offset, buf)

    got = run(image, readers=[read], lanes=2, buffer_size=MiB)
    assert got == plain_checksum(bytes(image.data), MiB, "blake2b")


class CountingHash:
    """A sha256 that records how many block updates run at once (the root
    hash takes 32-byte digests on the request's thread: not counted)."""

    lock = threading.Lock()
    running = 0
    most = 0

    def __init__(self) -> None:
        self._h = checksum.hash_factory("sha256")()

    def update(self, data: bytes | memoryview, /) -> None:
        if len(data) < 4096:
            self._h.update(data)
            return
        with CountingHash.lock:
            CountingHash.running += 1
            CountingHash.most = max(CountingHash.most, CountingHash.running)
        try:
            time.sleep(0.005)  # widen the window in which updates overlap
            self._h.update(data)
        finally:
            with CountingHash.lock:
                CountingHash.running -= 1

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@pytest.mark.parametrize("lanes", [1, 2])
def test_hashing_runs_on_at_most_lanes_threads(lanes: int) -> None:
    image = Image(16 * MiB, [(0, 16 * MiB)])
    CountingHash.most = 0
    zero = checksum.ZeroDigests()
    got = checksum_io.compute(
        checksum.plan(image.extents(), image.size, MiB, PAGE),
        new=CountingHash,
        zero_digest=lambda n: zero.get("sha256", n),
        readers=[image.read],
        pool=BufferPool(MiB, 8),
        lanes=lanes,
        progress=lambda n: None,
    )
    assert got == plain_checksum(bytes(image.data), MiB, "sha256")
    assert CountingHash.most == lanes


def test_storage_is_read_while_a_block_is_hashed() -> None:
    # One hashing lane: the next job's read starts while a hash runs, or
    # the first hash waits in vain.
    image = Image(8 * MiB, [(0, 8 * MiB)])
    second_read = threading.Event()
    waited: list[bool] = []

    def read(offset: int, buf: memoryview) -> None:
        if offset >= MiB:
            second_read.set()
        image.read(offset, buf)

    class WaitingHash(CountingHash):
        def update(self, data: bytes | memoryview, /) -> None:
            if not waited:
                waited.append(second_read.wait(10))
            super().update(data)

    zero = checksum.ZeroDigests()
    got = checksum_io.compute(
        checksum.plan(image.extents(), image.size, MiB, PAGE),
        new=WaitingHash,
        zero_digest=lambda n: zero.get("sha256", n),
        readers=[read],
        pool=BufferPool(MiB, 8),
        lanes=1,
        progress=lambda n: None,
    )
    assert got == plain_checksum(bytes(image.data), MiB, "sha256")
    assert waited == [True]
