from __future__ import annotations

import threading
from typing import Literal

import pytest

from vdsm_imageio import pipeline
from vdsm_imageio.errors import TicketCanceled
from vdsm_imageio.pipeline import BufferPool


def io_threads() -> list[threading.Thread]:
    """Helper threads of the data path still alive (other tests may own others)."""
    return [t for t in threading.enumerate() if t.name.startswith("io-")]


def pooled(pool: BufferPool) -> memoryview:
    buf = pool.try_acquire()
    assert buf is not None, "the pool has a free buffer"
    return buf


def source(data: bytes, step: int) -> pipeline.Produce:
    pos = 0

    def produce(buf: memoryview) -> int:
        nonlocal pos
        n = min(len(buf), step, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        return n

    return produce


def alive() -> None:
    pass


@pytest.mark.parametrize("side", ["produce", "consume"])
@pytest.mark.parametrize("single", [False, True])
def test_data_arrives_in_order(side: Literal["produce", "consume"], single: bool) -> None:
    data = bytes(range(256)) * 1000
    out = bytearray()
    pool = BufferPool(4096, 4)
    pipeline.run(
        pool, source(data, 1000), lambda b: out.extend(b), threaded_side=side, single=single
    )
    assert out == data
    assert pool.try_acquire() is not None


@pytest.mark.parametrize("side", ["produce", "consume"])
def test_consumer_error_stops_both_and_returns_buffers(side: Literal["produce", "consume"]) -> None:
    pool = BufferPool(1024, 2)
    calls = 0

    def consume(buf: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TicketCanceled(transfer_id="t")

    with pytest.raises(TicketCanceled):
        pipeline.run(pool, source(b"x" * 100_000, 1024), consume, threaded_side=side)
    assert calls == 3
    assert pool.try_acquire() is not None and pool.try_acquire() is not None
    assert not io_threads()


@pytest.mark.parametrize("side", ["produce", "consume"])
def test_producer_error_reaches_caller(side: Literal["produce", "consume"]) -> None:
    pool = BufferPool(1024, 2)
    produced = 0

    def produce(buf: memoryview) -> int:
        nonlocal produced
        produced += 1
        if produced == 4:
            raise OSError(5, "Input/output error")
        return 10

    with pytest.raises(OSError, match="Input/output"):
        pipeline.run(pool, produce, lambda b: None, threaded_side=side)
    assert not io_threads()


def test_runs_single_buffered_when_pool_has_one_free() -> None:
    pool = BufferPool(1024, 2)
    held = pooled(pool)
    threads: list[str] = []

    def consume(buf: memoryview) -> None:
        threads.append(threading.current_thread().name)

    pipeline.run(pool, source(b"y" * 5000, 1024), consume, threaded_side="consume")
    pool.release(held)
    assert set(threads) == {threading.current_thread().name}


def test_pool_never_allocates_more_than_its_count() -> None:
    pool = BufferPool(4096, 3)
    bufs = [pooled(pool) for _ in range(3)]
    assert pool.try_acquire() is None
    assert pool.allocated() == 3
    for b in bufs:
        pool.release(b)
    assert pool.allocated() == 3


def test_buffers_are_page_aligned() -> None:
    import ctypes
    import mmap

    pool = BufferPool(mmap.PAGESIZE * 2, 2)
    buf = pooled(pool)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert addr % mmap.PAGESIZE == 0


def test_request_gets_a_private_buffer_when_pool_is_exhausted() -> None:
    pool = BufferPool(1024 * 1024, 1, fallback_size=4096)
    held = pooled(pool)
    sizes: list[int] = []

    def produce_once(buf: memoryview) -> int:
        sizes.append(len(buf))
        if len(sizes) > 1:
            return 0
        buf[:3] = b"abc"
        return 3

    out = bytearray()
    pipeline.run(pool, produce_once, out.extend, threaded_side="produce")
    assert out == b"abc"
    assert sizes[0] == 4096
    # The private buffer is not kept by the pool.
    assert pool.allocated() == 1
    pool.release(held)
    assert pool.try_acquire() is held


def test_stuck_requests_never_starve_another() -> None:
    # Every pooled buffer is held by requests whose clients do not read.
    pool = BufferPool(4096, 2)
    stuck = [pooled(pool), pooled(pool)]
    done = threading.Event()

    def request() -> None:
        pipeline.run(pool, source(b"q" * 10_000, 1000), lambda b: None, threaded_side="produce")
        done.set()

    t = threading.Thread(target=request)
    t.start()
    assert done.wait(5)
    t.join()
    for b in stuck:
        pool.release(b)


def reader_of(data: bytes, calls: list[tuple[int, int]] | None = None) -> pipeline.ReadAt:
    def read(offset: int, buf: memoryview) -> None:
        if calls is not None:
            calls.append((offset, len(buf)))
        buf[:] = data[offset : offset + len(buf)]

    return read


@pytest.mark.parametrize("lanes", [1, 2, 3])
@pytest.mark.parametrize("start, length", [(0, 100_000), (1000, 4096 * 7), (5, 10)])
def test_lanes_deliver_in_order(lanes: int, start: int, length: int) -> None:
    data = bytes(range(256)) * 400
    out = bytearray()
    pool = BufferPool(4096, 8)
    calls: list[tuple[int, int]] = []
    assert pipeline.run_lanes(pool, [reader_of(data, calls)] * lanes, out.extend, start, length)
    assert out == data[start : start + length]
    # Every segment read once, none bigger than a buffer.
    assert sorted(calls) == [
        (o, min(4096, start + length - o)) for o in range(start, start + length, 4096)
    ]
    assert not io_threads()
    assert pool.allocated() <= 2 * lanes


def test_each_lane_reads_its_own_segments() -> None:
    data = bytes(range(256)) * 160
    seen: dict[int, list[int]] = {0: [], 1: []}

    def lane(i: int) -> pipeline.ReadAt:
        read = reader_of(data)

        def run(offset: int, buf: memoryview) -> None:
            seen[i].append(offset)
            read(offset, buf)

        return run

    out = bytearray()
    assert pipeline.run_lanes(BufferPool(4096, 4), [lane(0), lane(1)], out.extend, 0, len(data))
    assert out == data
    assert seen == {0: list(range(0, len(data), 8192)), 1: list(range(4096, len(data), 8192))}


def test_lanes_run_reads_at_once() -> None:
    # Both lanes must be inside a read at the same time: a barrier that
    # only two concurrent readers can pass.
    barrier = threading.Barrier(2, timeout=5)
    data = bytes(8192 * 4)

    def read(offset: int, buf: memoryview) -> None:
        barrier.wait()
        buf[:] = data[offset : offset + len(buf)]

    out = bytearray()
    assert pipeline.run_lanes(BufferPool(8192, 4), [read, read], out.extend, 0, len(data))
    assert len(out) == len(data)


def test_lane_reader_error_is_raised_and_every_lane_stops() -> None:
    pool = BufferPool(4096, 4)
    data = bytes(4096 * 50)

    def failing(offset: int, buf: memoryview) -> None:
        if offset >= 4096 * 7:
            raise OSError(5, "read failed")
        buf[:] = data[offset : offset + len(buf)]

    out = bytearray()
    with pytest.raises(OSError, match="read failed"):
        pipeline.run_lanes(pool, [reader_of(data), failing], out.extend, 0, len(data))
    assert len(out) <= 4096 * 7
    assert not io_threads()
    assert pool.allocated() == 4 and len([pool.try_acquire() for _ in range(4)]) == 4


def test_consumer_error_stops_lanes_without_reading_on() -> None:
    pool = BufferPool(4096, 4)
    calls: list[tuple[int, int]] = []
    data = bytes(4096 * 1000)
    sent = 0

    def consume(buf: memoryview) -> None:
        nonlocal sent
        sent += 1
        if sent == 3:
            raise TicketCanceled(transfer_id="t")

    with pytest.raises(TicketCanceled):
        pipeline.run_lanes(pool, [reader_of(data, calls)] * 2, consume, 0, len(data))
    # Reads stop within the buffers the lanes held, not at the end of the range.
    assert len(calls) <= 3 + 4
    assert not io_threads()


def test_lanes_need_a_pooled_buffer_each() -> None:
    pool = BufferPool(4096, 1)
    held = pool.try_acquire()
    assert held is not None
    calls: list[tuple[int, int]] = []
    assert not pipeline.run_lanes(
        pool, [reader_of(bytes(10_000), calls)] * 2, lambda b: None, 0, 10_000
    )
    assert calls == []
    pool.release(held)
