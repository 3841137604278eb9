"""Writers on separate connections to one ticket, against a real daemon.

Each round, writers start together on adjacent ranges whose ends fall
inside sectors, so neighbours read-modify-write the same sector in the
daemon; some zero their range with PATCH instead of writing it. Every
round writes new bytes over the last round's, so a lost write shows as old
bytes, and every byte is compared after every round. Writers alternate
between the TLS port and the unix socket.

Extents asked while others write and punch holes must stay well formed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.imageclient import Client, image_ticket, well_formed
from tests.support.loopfs import ext4_on_loop, needs_root
from tests.support.together import Together

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

KiB = 1024
MiB = 1024 * KiB
SECTOR_SIZES = (512, 4096)
ROUND_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def sectored(daemon: Daemon) -> Iterator[dict[int, Path]]:
    """Directories of the daemon's images on 512 and 4096-byte sectors."""
    needs_root()
    with contextlib.ExitStack() as stack:
        yield {
            size: stack.enter_context(
                ext4_on_loop(daemon.images, f"sec{size}", sector_size=size, direct_io=True)
            )
            for size in SECTOR_SIZES
        }


@contextlib.contextmanager
def clients(daemon: Daemon, ticket_id: str, count: int) -> Iterator[list[Client]]:
    opened = [Client(daemon, ticket_id, "unix" if i % 2 == 0 else "https") for i in range(count)]
    try:
        yield opened
    finally:
        for c in opened:
            c.close()


def adjacent_ranges(rng: random.Random, *, count: int, base: int, sector: int) -> list[int]:
    """count+1 points: ranges two sectors long on average, none of whose ends
    is on a 512-byte boundary, so each shares a sector with its neighbours."""
    lo = base + rng.randrange(1, sector)
    hi = base + count * 2 * sector - rng.randrange(1, sector)
    cuts: set[int] = set()
    while len(cuts) < count - 1:
        cut = rng.randrange(lo + 1, hi)
        if cut % 512:
            cuts.add(cut)
    return [lo, *sorted(cuts), hi]


def read_region(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


ADVERTISED = 0  # as many writers as OPTIONS advertises


def advertised_writers(daemon: Daemon, ticket_id: str) -> int:
    conn = daemon.unix()
    try:
        conn.request("OPTIONS", f"/images/{ticket_id}")
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    return int(body["max_writers"])


@pytest.mark.loop
@pytest.mark.parametrize("sector", SECTOR_SIZES)
@pytest.mark.parametrize(
    "count, rounds", [(2, 300), (ADVERTISED, 200)], ids=["2-writers", "advertised-writers"]
)
def test_writers_sharing_sectors_lose_nothing(
    daemon: Daemon, sectored: dict[int, Path], sector: int, count: int, rounds: int
) -> None:
    with image_ticket(daemon, sectored[sector], 4 * MiB) as (ticket_id, path):
        if count == ADVERTISED:
            # What a client is told is safe must be: every writer at once.
            count = advertised_writers(daemon, ticket_id)
            assert count == 8
        base, region = MiB, count * 2 * sector
        model = bytearray(read_region(path, base, region))
        with clients(daemon, ticket_id, count) as conns:
            together = Together(count, ROUND_TIMEOUT)
            try:
                for n in range(rounds):
                    rng = random.Random(f"{sector}-{count}-{n}")
                    points = adjacent_ranges(rng, count=count, base=base, sector=sector)
                    calls: list[Callable[[], None]] = []
                    for conn, (a, b) in zip(conns, itertools.pairwise(points), strict=True):
                        if rng.random() < 0.25:
                            calls.append(functools.partial(conn.zero, a, b - a))
                            data = bytes(b - a)
                        else:
                            data = rng.randbytes(b - a)
                            calls.append(functools.partial(conn.put, a, data))
                        model[a - base : b - base] = data
                    together.round(calls)
                    got = read_region(path, base, region)
                    if got != model:
                        lost = [
                            (a, b)
                            for a, b in itertools.pairwise(points)
                            if got[a - base : b - base] != model[a - base : b - base]
                        ]
                        pytest.fail(f"round {n}: acknowledged ranges lost bytes: {lost}")
            finally:
                together.close()
    # The storage made the daemon read-modify-write sectors of this size.
    assert f"path={path} mode=rw sparse=True device=False block_size={sector}" in daemon.log()


def test_extents_stay_well_formed_while_others_write_and_punch(daemon: Daemon) -> None:
    size, area, block = 8 * MiB, 256 * KiB, 4096
    ticket_id, _ = daemon.add_ticket(size=size, data=b"\x01" * block)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(op: str, seed: int) -> None:
        # Blocks flip between data and hole all over the area.
        rng = random.Random(seed)
        client = Client(daemon, ticket_id, "unix")
        try:
            while not stop.is_set():
                offset = rng.randrange(0, area // block) * block
                if op == "put":
                    client.put(offset, rng.randbytes(block))
                else:
                    client.zero(offset, block)
        except BaseException as e:
            errors.append(e)
        finally:
            client.close()

    writers = [
        threading.Thread(target=churn, args=(op, seed), daemon=True)
        for seed, op in enumerate(["put", "zero", "put", "zero"])
    ]
    reader = Client(daemon, ticket_id, "unix")
    bad: list[str] = []
    replies = 0
    try:
        for t in writers:
            t.start()
        deadline = time.monotonic() + 20
        while replies < 3000 and time.monotonic() < deadline and not errors:
            why = well_formed(reader.extents(), 0, size)
            replies += 1
            if why is not None:
                bad.append(why)
    finally:
        stop.set()
        for t in writers:
            t.join(ROUND_TIMEOUT)
        reader.close()
    assert not errors, errors
    assert not any(t.is_alive() for t in writers)
    assert replies >= 100, "too few replies to say anything"
    assert not bad, f"{len(bad)} of {replies} replies malformed, first: {bad[:3]}"
