"""Concurrent writers on one image, each with a backend (a descriptor) of its own.

Each round, writers start together on adjacent ranges whose ends fall
inside sectors, so neighbours read-modify-write the same block; some of
them zero their range instead. Every round writes new bytes over the last
round's, so a write lost to a stale read-modify-write shows as old bytes.
After each round every byte of the region is compared with the model.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.together import together
from vdsm_imageio.backends import Backend

from .images import KiB
from .targets import BackendFactory, Target, file_target, loop_target, nbd_raw_target

ROUND_TIMEOUT = 30.0

# Storage whose direct I/O needs 512 or 4096-byte alignment: files on ext4
# on loop devices of each sector size (with data, so the probe finds 512),
# and the loop devices themselves.
STORAGE: dict[str, Callable[[pytest.FixtureRequest], contextlib.AbstractContextManager[Target]]] = {
    "file-512": lambda r: file_target(
        "file-512", r.getfixturevalue("ext4_512_dir"), block_size=512, allocate=True
    ),
    "file-4k": lambda r: file_target(
        "file-4k", r.getfixturevalue("ext4_4k_dir"), block_size=4096, allocate=True
    ),
    "loop-512": lambda r: loop_target("loop-512", r.getfixturevalue("cache_dir"), sector_size=512),
    "loop-4k": lambda r: loop_target("loop-4k", r.getfixturevalue("cache_dir"), sector_size=4096),
}


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.loop) for name in STORAGE])
def sectored(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    with STORAGE[request.param](request) as target:
        factory = BackendFactory(target)
        try:
            yield factory
        finally:
            factory.close_all()


@dataclass(frozen=True)
class Op:
    offset: int
    data: bytes | None  # None: zero the range
    length: int
    punch_hole: bool = False

    def apply(self, backend: Backend) -> None:
        if self.data is None:
            backend.zero(self.offset, self.length, punch_hole=self.punch_hole)
            return
        buf = backend.buffer(self.length)
        buf[:] = self.data
        backend.write(self.offset, buf)


def unaligned_cuts(rng: random.Random, lo: int, hi: int, count: int) -> list[int]:
    """count distinct points in (lo, hi), none on a 512-byte boundary."""
    cuts: set[int] = set()
    while len(cuts) < count:
        cut = rng.randrange(lo + 1, hi)
        if cut % 512:
            cuts.add(cut)
    return sorted(cuts)


def adjacent_ops(
    rng: random.Random, *, writers: int, base: int, block: int, zero: bool
) -> list[Op]:
    """Ranges sharing a sector with each neighbour, two blocks long on average,
    so that most have a partial head and a partial tail."""
    start = base + rng.randrange(1, block)
    end = base + writers * 2 * block - rng.randrange(1, block)
    points = [start, *unaligned_cuts(rng, start, end, writers - 1), end]
    ops = []
    for a, b in itertools.pairwise(points):
        if zero and rng.random() < 0.25:
            ops.append(Op(a, None, b - a, punch_hole=rng.random() < 0.5))
        else:
            ops.append(Op(a, rng.randbytes(b - a), b - a))
    return ops


@contextlib.contextmanager
def writers(backends: list[Backend]) -> Iterator[Callable[[list[Op]], None]]:
    """A function that applies ops together, one per backend, each from a
    thread of its own; it returns when all are done."""
    with together(len(backends), ROUND_TIMEOUT) as t:

        def apply(ops: list[Op]) -> None:
            t.round([functools.partial(op.apply, b) for op, b in zip(ops, backends, strict=True)])

        yield apply


def run_rounds(
    factory: BackendFactory,
    backends: list[Backend],
    *,
    rounds: int,
    seed: int,
    zero: bool,
    block: int | None = None,
) -> None:
    target = factory.target
    block = block or max(b.block_size for b in backends)
    base = 64 * KiB
    size = len(backends) * 2 * block
    model = bytearray(target.read_back(base, size))
    with writers(backends) as apply:
        for n in range(rounds):
            rng = random.Random(f"{seed}-{n}")
            ops = adjacent_ops(rng, writers=len(backends), base=base, block=block, zero=zero)
            apply(ops)
            for op in ops:
                rel = op.offset - base
                model[rel : rel + op.length] = op.data or bytes(op.length)
            got = target.read_back(base, size)
            if got != model:
                lost = [
                    (op.offset, op.length)
                    for op in ops
                    if got[op.offset - base : op.offset - base + op.length]
                    != (op.data or bytes(op.length))
                ]
                pytest.fail(f"seed={seed} round={n}: ranges lost bytes: {lost}")


@pytest.mark.parametrize("count, rounds", [(2, 300), (8, 200)], ids=["2-writers", "8-writers"])
def test_adjacent_unaligned_writers_lose_nothing(
    sectored: BackendFactory, count: int, rounds: int
) -> None:
    backends = [sectored() for _ in range(count)]
    assert {b.block_size for b in backends} == {sectored.target.block_size}
    run_rounds(sectored, backends, rounds=rounds, seed=count, zero=False)


@pytest.mark.parametrize("count, rounds", [(2, 300), (8, 200)], ids=["2-writers", "8-writers"])
def test_adjacent_writes_and_zeros_lose_nothing(
    sectored: BackendFactory, count: int, rounds: int
) -> None:
    backends = [sectored() for _ in range(count)]
    run_rounds(sectored, backends, rounds=rounds, seed=100 + count, zero=True)


@pytest.mark.loop
def test_writers_seeing_different_block_sizes_lose_nothing(ext4_512_dir: str) -> None:
    # The probe answers 4096 for a file without data and 512 once it has
    # some: two connections can rewrite blocks of different sizes.
    with file_target("file-512", ext4_512_dir) as target:
        factory = BackendFactory(target)
        try:
            early = [factory(), factory()]
            Op(0, bytes(range(256)) * 16, 4096).apply(early[0])
            late = [factory(), factory()]
            assert [b.block_size for b in early + late] == [4096, 4096, 512, 512]
            mixed = [early[0], late[0], early[1], late[1]]
            run_rounds(factory, mixed, rounds=300, seed=7, zero=True)
        finally:
            factory.close_all()


def test_aligned_write_over_a_partial_one_is_not_lost(sectored: BackendFactory) -> None:
    """A whole-block write landing inside another writer's read-modify-write
    of that block must not be undone by the write back."""
    aligned, partial = sectored(), sectored()
    block = aligned.block_size
    base = 64 * KiB
    size = 2 * block
    with writers([aligned, partial]) as apply:
        for n in range(300):
            rng = random.Random(f"aligned-{n}")
            whole = rng.randbytes(size)
            start, end = unaligned_cuts(rng, base, base + size, 2)
            if end // block != start // block:
                end = start + 1  # one partial block, inside the aligned range
            piece = rng.randbytes(end - start)
            apply([Op(base, whole, size), Op(start, piece, end - start)])
            got = sectored.target.read_back(base, size)
            rel = start - base
            inside = got[rel : rel + len(piece)]
            assert inside in (piece, whole[rel : rel + len(piece)]), f"round {n}"
            outside = got[:rel] + got[rel + len(piece) :]
            assert outside == whole[:rel] + whole[rel + len(piece) :], (
                f"round {n}: the aligned write was lost"
            )


@pytest.mark.loop
def test_qemu_nbd_serializes_unaligned_writes_itself(ext4_4k_dir: str, socket_dir: str) -> None:
    """Why the nbd backend needs no sector lock: qemu-nbd with cache=none on
    4096-byte sectors pads unaligned requests itself, and its block layer
    serializes a padded request with every overlapping one."""
    with nbd_raw_target("nbd-raw-4k", ext4_4k_dir, socket_dir) as target:
        factory = BackendFactory(target)
        try:
            backends = [factory() for _ in range(8)]
            assert {b.block_size for b in backends} == {1}  # we never align for qemu
            run_rounds(factory, backends, rounds=200, seed=11, zero=True, block=4096)
        finally:
            factory.close_all()
