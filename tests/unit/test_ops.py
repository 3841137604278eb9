"""Operations on a ticket's storage (vdsm_imageio.ops), run as requests of the ticket."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.tickets import valid_ticket
from vdsm_imageio import checksum, ops, ticketspec
from vdsm_imageio.backends import DirtyExtent, HostOptions, ZeroExtent
from vdsm_imageio.backends.file import open_file
from vdsm_imageio.backends.handles import Handles
from vdsm_imageio.backends.sectorlock import SectorLocks
from vdsm_imageio.errors import HostRefused, TicketCanceled
from vdsm_imageio.pipeline import BufferPool
from vdsm_imageio.tickets import Ticket

KiB = 1024
MiB = 1024**2


class MemoryBackend:
    """An image in memory that implements the Backend protocol and no capability."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.flushed = 0
        self.closed = False

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def block_size(self) -> int:
        return 1

    def buffer(self, size: int) -> memoryview:
        return memoryview(bytearray(size))

    def readinto(self, offset: int, buf: memoryview) -> int:
        chunk = self.data[offset : offset + len(buf)]
        buf[: len(chunk)] = chunk
        return len(chunk)

    def write(self, offset: int, buf: memoryview) -> int:
        self.data[offset : offset + len(buf)] = buf
        return len(buf)

    def zero(self, offset: int, length: int, *, punch_hole: bool) -> None:
        self.data[offset : offset + length] = bytes(length)

    def flush(self) -> None:
        self.flushed += 1

    def extents(self, context: str, start: int, length: int) -> Iterator[ZeroExtent | DirtyExtent]:
        yield ZeroExtent(start, min(length, self.size - start), zero=False, hole=False)

    def close(self) -> None:
        self.closed = True


class Body:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def done(self) -> bool:
        return self._pos == len(self._data)

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def make_ticket(size: int) -> Ticket:
    spec = ticketspec.parse(
        valid_ticket(size=size, ops=["write"], timeout=60, transfer_id="t1"),
        default_inactivity_timeout=60,
    )
    return Ticket(spec, FakeClock(), spec.url or "")


def caps(pool: BufferPool, splice: socket.socket | None = None) -> ops.Capabilities:
    return ops.Capabilities(splice=splice, lanes=2, nbd_splice=True, pool=pool)


def reference_checksum(data: bytes, block_size: int) -> str:
    """The digest of ovirt-imageio's block scheme, computed the plain way
    (qemu sees whole 512-byte sectors: the image is padded with zeros)."""
    data += bytes(-len(data) % 512)
    root = hashlib.blake2b(digest_size=32)
    for start in range(0, len(data), block_size):
        root.update(hashlib.blake2b(data[start : start + block_size], digest_size=32).digest())
    return root.hexdigest()


def test_a_backend_with_only_the_protocol_serves_every_operation() -> None:
    data = os.urandom(3 * MiB + 5)
    backend = MemoryBackend(bytes(len(data)))
    handles = Handles(lambda: backend, transfer_id="t1")
    ticket = make_ticket(len(data))
    pool = BufferPool(MiB, 4)

    upload = ops.Upload(
        backend=handles.backend,
        body=Body(data),
        start=0,
        declared=len(data),
        size=len(data),
        flush=True,
        pool=pool,
    )
    ticket.run(upload)
    assert backend.data == data and backend.flushed == 1

    sent = bytearray()
    heads: list[int] = []
    download = ops.Download(
        handles, 0, len(data), caps(pool), begin=lambda: heads.append(1), send=sent.extend
    )
    ticket.run(download)
    assert heads == [1] and sent == data

    digest = ticket.run(
        ops.Checksum(
            handles=handles,
            length=len(data),
            algorithm="blake2b",
            block_size=MiB,
            zero_digest=lambda n: checksum.ZeroDigests().get("blake2b", n),
            lanes=2,
            pool=pool,
        )
    )
    assert digest == reference_checksum(data, MiB)

    zero = ops.Zero(backend=backend, start=KiB, length=2 * KiB, punch_hole=True, flush=True)
    ticket.run(zero)
    assert backend.data[KiB : 3 * KiB] == bytes(2 * KiB) and backend.flushed == 2
    ticket.run(ops.Flush(backend))
    assert backend.flushed == 3

    extents = ticket.run(ops.Extents(backend=backend, context="zero", start=0, span=len(data)))
    assert [(e.start, e.length) for e in extents] == [(0, len(data))]
    assert ticket.status().transferred == len(data)


def test_extents_past_the_end_of_a_short_image_are_one_hole() -> None:
    backend = MemoryBackend(b"x" * MiB)
    extents = ops.Extents(backend=backend, context="zero", start=0, span=3 * MiB)
    found = extents.run(lambda n: None)
    assert [e.to_json() for e in found] == [
        {"start": 0, "length": MiB, "zero": False, "hole": False},
        {"start": MiB, "length": 2 * MiB, "zero": True, "hole": True},
    ]


def test_a_cancel_stops_a_download_at_its_next_piece() -> None:
    data = os.urandom(8 * MiB)
    backend = MemoryBackend(data)
    handles = Handles(lambda: backend, transfer_id="t1")
    ticket = make_ticket(len(data))
    sent = bytearray()

    def send(piece: memoryview) -> None:
        sent.extend(piece)
        ticket.cancel()

    download = ops.Download(
        handles, 0, len(data), caps(BufferPool(MiB, 4)), begin=lambda: None, send=send
    )
    with pytest.raises(TicketCanceled):
        ticket.run(download)
    assert 0 < len(sent) < len(data)
    assert ticket.status().transferred == len(sent)


@pytest.fixture
def image(tmp_path: Path) -> str:
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True, check=True
    )
    if fs.stdout.strip() == "tmpfs":
        pytest.fail("tmp_path must be on a disk file system for O_DIRECT")
    path = tmp_path / "image.raw"
    path.write_bytes(os.urandom(4 * MiB))
    return str(path)


@pytest.mark.parametrize("plain", [True, False])
def test_a_file_download_is_spliced_only_into_a_plain_socket(image: str, plain: bool) -> None:
    expected = Path(image).read_bytes()
    pool = BufferPool(MiB, 8)
    a, b = socket.socketpair()
    got = bytearray()

    def receive() -> None:
        while chunk := b.recv(MiB):
            got.extend(chunk)

    reader = threading.Thread(target=receive)
    reader.start()
    try:
        a.settimeout(10)
        with open_file(image, mode="r", sparse=False, locks=SectorLocks()) as backend:
            handles = Handles(lambda: backend, transfer_id="t1")
            download = ops.Download(
                handles,
                0,
                len(expected),
                # A TLS socket cannot take spliced pages: the connection says
                # so with no splice target.
                caps(pool, splice=a if plain else None),
                begin=lambda: None,
                send=a.sendall,
            )
            make_ticket(len(expected)).run(download)
    finally:
        a.close()
        reader.join(10)
        b.close()
    assert got == expected
    # Spliced bytes never pass through our buffers.
    assert (pool.allocated() == 0) == plain


# Backends that gain from capabilities of their own (the http backend of a
# proxy has all three): the operations use them, no handler knows them.


class StreamingBackend(MemoryBackend):
    """Streams: told a request's range first, as one exchange with its storage."""

    def __init__(self, data: bytes, events: list[str], *, refuse: bool = False) -> None:
        super().__init__(data)
        self.events = events
        self.refuse = refuse

    @contextmanager
    def reading(self, start: int, length: int) -> Iterator[None]:
        if self.refuse:
            raise HostRefused(host="h:1", status=404, reason="no such image")
        self.events.append(f"reading {start} {length}")
        yield
        self.events.append("read")

    @contextmanager
    def writing(self, start: int, length: int, *, flush: bool) -> Iterator[None]:
        self.events.append(f"writing {start} {length} flush={flush}")
        yield
        self.events.append("written")

    def readinto(self, offset: int, buf: memoryview) -> int:
        self.events.append("readinto")
        return super().readinto(offset, buf)

    def write(self, offset: int, buf: memoryview) -> int:
        self.events.append("write")
        return super().write(offset, buf)


def test_a_streaming_backend_is_told_the_range_before_the_head() -> None:
    data = os.urandom(3 * MiB)
    events: list[str] = []
    backend = StreamingBackend(data, events)
    sent = bytearray()
    download = ops.Download(
        Handles(lambda: backend, transfer_id="t1"),
        MiB,
        2 * MiB,
        caps(BufferPool(MiB, 4)),
        begin=lambda: events.append("head"),
        send=sent.extend,
    )
    make_ticket(len(data)).run(download)
    assert sent == data[MiB:]
    assert events[:2] == [f"reading {MiB} {2 * MiB}", "head"]
    assert events[2:] == ["readinto", "readinto", "read"]


def test_a_refusal_of_a_streamed_range_comes_before_the_head() -> None:
    events: list[str] = []
    backend = StreamingBackend(bytes(MiB), events, refuse=True)
    download = ops.Download(
        Handles(lambda: backend, transfer_id="t1"),
        0,
        MiB,
        caps(BufferPool(MiB, 4)),
        begin=lambda: events.append("head"),
        send=lambda data: None,
    )
    with pytest.raises(HostRefused):
        make_ticket(MiB).run(download)
    # No head went out: the refusal is still the reply's status.
    assert events == []


@pytest.mark.parametrize("flush", [True, False])
def test_an_upload_of_known_length_is_one_streamed_write(flush: bool) -> None:
    data = os.urandom(2 * MiB + 7)
    events: list[str] = []
    backend = StreamingBackend(bytes(len(data) + KiB), events)
    upload = ops.Upload(
        backend=backend,
        body=Body(data),
        start=KiB,
        declared=len(data),
        size=len(data) + KiB,
        flush=flush,
        pool=BufferPool(MiB, 4),
    )
    make_ticket(len(data) + KiB).run(upload)
    assert backend.data[KiB:] == data
    assert events == [f"writing {KiB} {len(data)} flush={flush}", *["write"] * 3, "written"]
    # The storage flushed the stream as told: no flush of its own after.
    assert backend.flushed == 0


def test_an_upload_of_unknown_length_is_written_and_flushed_the_plain_way() -> None:
    data = os.urandom(MiB + 3)
    events: list[str] = []
    backend = StreamingBackend(bytes(2 * MiB), events)
    upload = ops.Upload(
        backend=backend,
        body=Body(data),
        start=0,
        declared=None,
        size=2 * MiB,
        flush=True,
        pool=BufferPool(MiB, 4),
    )
    make_ticket(2 * MiB).run(upload)
    assert backend.data[: len(data)] == data
    assert events == ["write", "write"] and backend.flushed == 1


class RelayedBackend(MemoryBackend):
    """Relayed: the image is on another daemon, which tells its options and
    computes checksums; its data must not be read for them."""

    def __init__(self, size: int, options: HostOptions) -> None:
        super().__init__(bytes(size))
        self.options = options
        self.asked: list[tuple[str, int]] = []

    def host_options(self) -> HostOptions:
        return self.options

    def checksum(self, algorithm: str, block_size: int) -> str:
        self.asked.append((algorithm, block_size))
        return "computed-by-the-host"

    def readinto(self, offset: int, buf: memoryview) -> int:
        raise AssertionError("a relayed checksum read the image")


def test_a_relayed_checksum_is_computed_by_the_host_and_counted() -> None:
    backend = RelayedBackend(5 * MiB, HostOptions(frozenset(), 1, 1, None, None))
    ticket = make_ticket(5 * MiB)
    digest = ticket.run(
        ops.Checksum(
            handles=Handles(lambda: backend, transfer_id="t1"),
            length=5 * MiB,
            algorithm="sha256",
            block_size=MiB,
            zero_digest=lambda n: b"",
            lanes=2,
            pool=BufferPool(MiB, 4),
        )
    )
    assert digest == "computed-by-the-host"
    assert backend.asked == [("sha256", MiB)]
    assert ticket.status().transferred == 5 * MiB


def test_the_offer_for_a_relayed_image_is_at_most_the_hosts() -> None:
    host = HostOptions(frozenset({"extents", "zero", "other"}), 2, 1, 3 * MiB, "\0/host")
    backend = RelayedBackend(3 * MiB, host)
    features = ["checksum", "extents", "zero", "flush"]
    got = ops.offer(backend, features=features, readers=8, writers=8, size=4 * MiB)
    assert got == ops.Offer(["extents", "zero"], 2, 1, 3 * MiB)
    # A read-only ticket offers no writer, whatever the host takes.
    got = ops.offer(backend, features=features, readers=1, writers=0, size=MiB)
    assert got == ops.Offer(["extents", "zero"], 1, 0, MiB)


def test_the_offer_for_a_local_image_is_the_services() -> None:
    features = ["checksum", "extents"]
    got = ops.offer(MemoryBackend(bytes(MiB)), features=features, readers=8, writers=4, size=MiB)
    assert got == ops.Offer(features, 8, 4, MiB)


class AbortableBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__(b"")
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1


def test_an_abort_reaches_the_storage_opened_before_and_after() -> None:
    before = AbortableBackend()
    handles = Handles(lambda: before, transfer_id="t1")
    assert handles.backend is before
    handles.abort()
    assert before.aborted == 1
    # Opened while the abort ran, or after it: stopped as it opens.
    after = AbortableBackend()
    late = Handles(lambda: after, transfer_id="t1")
    late.abort()
    assert after.aborted == 0
    assert late.backend is after and after.aborted == 1
