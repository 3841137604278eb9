"""A soak of mixed requests checked against one in-memory model of the image.

Writers own disjoint ranges of one image on 4096-byte sectors; the ends of
the ranges fall inside sectors, so every boundary sector is shared by two
writers and rewritten by both. Each writer sends a random mix on both
sockets (TLS and unix): PUT aligned and unaligned, chunked, cut off
half-way, PATCH zero and flush, ranged GET and extents of its range. Every
read is compared with the model; a writer updates the model of its range
when a write is acknowledged.

Half-way through, the daemon is killed with SIGKILL and restarted on the
same directory. Nothing the kernel had is lost with a process, so every
acknowledged write must be there afterwards, flushed or not; the write each
writer had in flight, and a write cut off half-way, may have left its own
range partly written: for that range only, a byte may be old or new, and
the model takes what the daemon then reads back.

The ops are seeded: SOAK_SEED=N replays a run's choices (not its timing);
the seed is in every failure message.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.imageclient import (
    TRANSPORTS,
    Client,
    new_image,
    put_cut_off,
    ticket_for,
    well_formed,
)
from tests.support.loopfs import ext4_on_loop, needs_root

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.daemon import Daemon, MakeDaemon

KiB = 1024
MiB = 1024 * KiB
SECTOR = 4096
IMAGE_SIZE = 16 * MiB
WRITERS = 4
DURATION = 40.0  # seconds of requests; the kill comes half-way
MAX_OPS = 20_000  # per writer, whatever the machine's speed
WAIT_TIMEOUT = 30.0
# Errors a client sees when the daemon dies under its request.
DAEMON_GONE = (OSError, http.client.HTTPException)


class Failure(Exception):
    pass


class Soak:
    """The model and what the writers and the main thread share."""

    def __init__(self, daemon: Daemon, path: Path, seed: int) -> None:
        self.daemon = daemon
        self.path = path
        self.seed = seed
        self.ticket = ticket_for(path, IMAGE_SIZE)
        with open(path, "rb") as f:
            self.model = bytearray(f.read())
        self.deadline = time.monotonic() + DURATION
        self.killing = threading.Event()
        self.restarted = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.waiting = 0
        self.errors: list[BaseException] = []

    @property
    def ticket_id(self) -> str:
        return str(self.ticket["uuid"])

    def fail(self, message: str) -> Failure:
        return Failure(f"seed={self.seed}: {message}")

    def compare(self, offset: int, got: bytes, what: str) -> None:
        want = self.model[offset : offset + len(got)]
        if got != want:
            first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
            raise self.fail(
                f"{what}: byte {offset + first} is {got[first]:#04x}, "
                f"the model has {want[first]:#04x} (read [{offset}, {offset + len(got)}))"
            )


def ranges(rng: random.Random) -> list[tuple[int, int]]:
    """WRITERS adjacent ranges covering the image but its first sector,
    each cut inside a sector."""
    share = (IMAGE_SIZE - SECTOR) // WRITERS
    cuts = [SECTOR + i * share + rng.randrange(1, SECTOR) for i in range(1, WRITERS)]
    points = [SECTOR, *cuts, IMAGE_SIZE]
    return list(itertools.pairwise(points))


class Writer:
    def __init__(self, soak: Soak, index: int, lo: int, hi: int) -> None:
        self.soak = soak
        self.name = f"writer-{index}"
        self.lo, self.hi = lo, hi
        self.rng = random.Random(f"{soak.seed}-{index}")
        self.clients: dict[str, Client] = {}
        # The write on the wire: its range and the bytes it leaves there.
        self.inflight: tuple[int, bytes] | None = None
        self.ops = 0
        self.counts: dict[str, int] = {}
        self.table: list[tuple[Callable[[str], None], int]] = [
            (self.put_aligned, 3),
            (self.put_unaligned, 4),
            (self.put_chunked, 2),
            (self.put_cut_off, 1),
            (self.zero, 2),
            (self.flush, 1),
            (self.get, 3),
            (self.extents, 1),
        ]

    def run(self) -> None:
        try:
            self._connect()
            ops, weights = zip(*self.table, strict=True)
            while self.ops < MAX_OPS and time.monotonic() < self.soak.deadline:
                if self.soak.stop.is_set():
                    return
                op = self.rng.choices(ops, weights)[0]
                transport = self.rng.choice(TRANSPORTS)
                try:
                    op(transport)
                except DAEMON_GONE:
                    if not self.soak.killing.is_set():
                        raise
                    self._after_restart()
                self.ops += 1
                self.counts[op.__name__] = self.counts.get(op.__name__, 0) + 1
        except BaseException as e:
            self.soak.errors.append(e)
            self.soak.stop.set()
        finally:
            self._close()

    # Choosing ranges.

    def pick(self, longest: int) -> tuple[int, int]:
        """A range inside ours; often one touching a shared sector."""
        length = min(self.rng.randint(1, longest), self.hi - self.lo)
        where = self.rng.random()
        if where < 0.15:
            start = self.lo
        elif where < 0.3:
            start = self.hi - length
        else:
            start = self.rng.randrange(self.lo, self.hi - length + 1)
        return start, length

    def pick_aligned(self) -> tuple[int, int]:
        first = -(-self.lo // SECTOR)
        last = self.hi // SECTOR
        start = self.rng.randrange(first, last)
        count = self.rng.randint(1, min(64, last - start))
        return start * SECTOR, count * SECTOR

    # Ops.

    def put_aligned(self, transport: str) -> None:
        offset, length = self.pick_aligned()
        self._write(offset, self.rng.randbytes(length), transport)

    def put_unaligned(self, transport: str) -> None:
        offset, length = self.pick(self.rng.choice([600, 64 * KiB, MiB]))
        self._write(offset, self.rng.randbytes(length), transport)

    def put_chunked(self, transport: str) -> None:
        offset, length = self.pick(256 * KiB)
        data = self.rng.randbytes(length)
        cuts = sorted(self.rng.sample(range(1, length), min(5, length - 1))) if length > 1 else []
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
        flush = self.rng.random() < 0.2
        self.inflight = (offset, data)
        self.client(transport).put_chunked(offset, pieces, flush=flush)
        self._acknowledged()

    def put_cut_off(self, transport: str) -> None:
        offset, length = self.pick(2 * MiB)
        if length < 2:
            return
        data = self.rng.randbytes(length)
        self.inflight = (offset, data)
        put_cut_off(self.soak.daemon, self.soak.ticket_id, transport, offset, data)
        # Never acknowledged: what of it reached the image is read back.
        self._settle()

    def zero(self, transport: str) -> None:
        offset, length = self.pick(self.rng.choice([600, 64 * KiB, 2 * MiB]))
        self.inflight = (offset, bytes(length))
        self.client(transport).zero(offset, length, flush=self.rng.random() < 0.2)
        self._acknowledged()

    def flush(self, transport: str) -> None:
        self.client(transport).flush()

    def get(self, transport: str) -> None:
        offset, length = self.pick(self.rng.choice([600, 64 * KiB, MiB]))
        got = self.client(transport).get(offset, length)
        self.soak.compare(offset, got, f"{self.name} GET")

    def extents(self, transport: str) -> None:
        extents = self.client(transport).extents(self.lo, self.hi - self.lo)
        why = well_formed(extents, self.lo, self.hi)
        if why is not None:
            raise self.soak.fail(f"{self.name} extents: {why}")
        for e in extents:
            if e["zero"]:
                a, b = e["start"], e["start"] + e["length"]
                if any(self.soak.model[a:b]):
                    raise self.soak.fail(f"{self.name} extents: data in zero extent {e}")

    # Writes and the model.

    def _write(self, offset: int, data: bytes, transport: str) -> None:
        self.inflight = (offset, data)
        self.client(transport).put(offset, data, flush=self.rng.random() < 0.2)
        self._acknowledged()

    def _acknowledged(self) -> None:
        assert self.inflight is not None
        offset, data = self.inflight
        self.soak.model[offset : offset + len(data)] = data
        self.inflight = None

    def _settle(self) -> None:
        """Read back the range of a write that was never acknowledged: each
        byte must be as before or as written; the model takes it."""
        assert self.inflight is not None
        offset, data = self.inflight
        got = self.client("unix").get(offset, len(data))
        old = self.soak.model[offset : offset + len(data)]
        for i in range(0, len(got), SECTOR):
            g, o, n = got[i : i + SECTOR], old[i : i + SECTOR], data[i : i + SECTOR]
            if g not in (o, n) and any(b not in (x, y) for b, x, y in zip(g, o, n, strict=True)):
                raise self.soak.fail(
                    f"{self.name}: an unacknowledged write left bytes that are "
                    f"neither old nor new in [{offset + i}, {offset + i + len(g)})"
                )
        self.soak.model[offset : offset + len(data)] = got
        self.inflight = None

    # Connections.

    def client(self, transport: str) -> Client:
        return self.clients[transport]

    def _connect(self) -> None:
        self.clients = {t: Client(self.soak.daemon, self.soak.ticket_id, t) for t in TRANSPORTS}

    def _close(self) -> None:
        for c in self.clients.values():
            c.close()

    def _after_restart(self) -> None:
        self._close()
        with self.soak.lock:
            self.soak.waiting += 1
        if not self.soak.restarted.wait(WAIT_TIMEOUT):
            raise self.soak.fail(f"{self.name}: no restart in {WAIT_TIMEOUT}s")
        self._connect()
        if self.inflight is not None:
            self._settle()


@contextlib.contextmanager
def running(writers: list[Writer]) -> Iterator[list[threading.Thread]]:
    threads = [threading.Thread(target=w.run, name=w.name, daemon=True) for w in writers]
    for t in threads:
        t.start()
    try:
        yield threads
    finally:
        writers[0].soak.stop.set()
        writers[0].soak.restarted.set()
        for t in threads:
            t.join(WAIT_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a writer is stuck"


def check_image(soak: Soak, *, skip: list[tuple[int, bytes]]) -> None:
    """The whole image through the daemon (TLS) and on disk, against the model."""
    conn = Client(soak.daemon, soak.ticket_id, "https")
    try:
        through_daemon = bytearray(conn.get(0, IMAGE_SIZE))
    finally:
        conn.close()
    with open(soak.path, "rb") as f:
        on_disk = bytearray(f.read())
    for got in (through_daemon, on_disk):
        for offset, data in skip:
            got[offset : offset + len(data)] = soak.model[offset : offset + len(data)]
    soak.compare(0, bytes(through_daemon), "whole image through the daemon")
    soak.compare(0, bytes(on_disk), "whole image on disk")


def kill_and_restart(soak: Soak, writers: list[Writer], restart: Callable[[], Daemon]) -> None:
    soak.killing.set()
    soak.daemon.kill()
    soak.daemon = restart()
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        if soak.stop.is_set():
            return  # a writer failed: its error says why
        with soak.lock:
            if soak.waiting == len(writers):
                break
        if time.monotonic() > deadline:
            raise soak.fail("writers did not all notice the kill")
        time.sleep(0.05)
    soak.daemon.result("Ticket.add", ticket=soak.ticket)
    # Writers are quiet: what was acknowledged before the kill is there.
    check_image(soak, skip=[w.inflight for w in writers if w.inflight is not None])
    soak.killing.clear()
    soak.restarted.set()


@pytest.mark.loop
def test_soak_mixed_requests_with_a_kill_match_the_model(
    make_daemon: MakeDaemon,
) -> None:
    needs_root()
    seed = int(os.environ.get("SOAK_SEED", random.randrange(2**32)))
    print(f"soak seed={seed}")
    # Two connections of each writer, and one cut off at a time.
    http = {"max_writers": 3 * WRITERS}
    daemon = make_daemon(http=http)
    with ext4_on_loop(daemon.images, "sec4096", sector_size=SECTOR, direct_io=True) as directory:
        path = new_image(directory, IMAGE_SIZE)
        soak = Soak(daemon, path, seed)
        daemon.result("Ticket.add", ticket=soak.ticket)
        writers = [
            Writer(soak, i, lo, hi) for i, (lo, hi) in enumerate(ranges(random.Random(seed)))
        ]
        try:
            with running(writers) as threads:
                half_way = soak.deadline - DURATION / 2
                while time.monotonic() < half_way and not soak.stop.is_set():
                    time.sleep(0.1)
                if not soak.stop.is_set():
                    kill_and_restart(
                        soak, writers, lambda: make_daemon(directory=daemon.dir, http=http)
                    )
                for t in threads:
                    t.join(max(0.0, soak.deadline + WAIT_TIMEOUT - time.monotonic()))
            if soak.errors:
                e = soak.errors[0]
                if isinstance(e, Failure):
                    raise e
                raise soak.fail(f"{type(e).__name__}: {e}") from e
            check_image(soak, skip=[])
            counts: dict[str, Any] = {}
            for w in writers:
                for name, n in w.counts.items():
                    counts[name] = counts.get(name, 0) + n
            print(f"soak seed={seed} ops={sum(counts.values())} {counts}")
            # Each kind of request ran, and the daemon came back.
            assert set(counts) == {op.__name__ for op, _ in writers[0].table}, counts
            assert daemon.killed and soak.daemon is not daemon
        finally:
            soak.daemon.result("Ticket.remove", uuid=soak.ticket_id)
