import threading

import pytest

from vdsm_imageio import pipeline
from vdsm_imageio.errors import TicketCanceled
from vdsm_imageio.pipeline import BufferPool


def source(data: bytes, step: int):
    pos = 0

    def produce(buf: memoryview) -> int:
        nonlocal pos
        n = min(len(buf), step, len(data) - pos)
        buf[:n] = data[pos:pos + n]
        pos += n
        return n

    return produce


def alive():
    pass


@pytest.mark.parametrize("side", ["produce", "consume"])
@pytest.mark.parametrize("single", [False, True])
def test_data_arrives_in_order(side, single):
    data = bytes(range(256)) * 1000
    out = bytearray()
    pool = BufferPool(4096, 4)
    pipeline.run(pool, source(data, 1000), lambda b: out.extend(b),
                 threaded_side=side, check_alive=alive, single=single)
    assert out == data
    assert pool.try_acquire() is not None


@pytest.mark.parametrize("side", ["produce", "consume"])
def test_consumer_error_stops_both_and_returns_buffers(side):
    pool = BufferPool(1024, 2)
    calls = 0

    def consume(buf):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise TicketCanceled(transfer_id="t")

    with pytest.raises(TicketCanceled):
        pipeline.run(pool, source(b"x" * 100_000, 1024), consume,
                     threaded_side=side, check_alive=alive)
    assert calls == 3
    assert pool.try_acquire() is not None and pool.try_acquire() is not None
    assert threading.active_count() == 1


@pytest.mark.parametrize("side", ["produce", "consume"])
def test_producer_error_reaches_caller(side):
    pool = BufferPool(1024, 2)
    produced = 0

    def produce(buf):
        nonlocal produced
        produced += 1
        if produced == 4:
            raise OSError(5, "Input/output error")
        return 10

    with pytest.raises(OSError, match="Input/output"):
        pipeline.run(pool, produce, lambda b: None, threaded_side=side, check_alive=alive)
    assert threading.active_count() == 1


def test_runs_single_buffered_when_pool_has_one_free():
    pool = BufferPool(1024, 2)
    held = pool.try_acquire()
    threads = []

    def consume(buf):
        threads.append(threading.current_thread().name)

    pipeline.run(pool, source(b"y" * 5000, 1024), consume,
                 threaded_side="consume", check_alive=alive)
    pool.release(held)
    assert set(threads) == {threading.current_thread().name}


def test_pool_never_allocates_more_than_its_count():
    pool = BufferPool(4096, 3)
    bufs = [pool.try_acquire() for _ in range(3)]
    assert pool.try_acquire() is None
    assert pool.allocated() == 3
    for b in bufs:
        pool.release(b)
    assert pool.allocated() == 3


def test_buffers_are_page_aligned():
    import ctypes
    import mmap
    pool = BufferPool(mmap.PAGESIZE * 2, 2)
    buf = pool.try_acquire()
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert addr % mmap.PAGESIZE == 0


def test_waiting_for_a_buffer_stops_when_canceled():
    pool = BufferPool(1024, 1)
    held = pool.try_acquire()
    canceled = threading.Event()

    def check_alive():
        if canceled.is_set():
            raise TicketCanceled(transfer_id="t")

    timer = threading.Timer(0.2, canceled.set)
    timer.start()
    with pytest.raises(TicketCanceled):
        pipeline.run(pool, source(b"z", 1), lambda b: None,
                     threaded_side="produce", check_alive=check_alive)
    timer.join()
    pool.release(held)


def test_waiting_request_gets_a_released_buffer():
    pool = BufferPool(1024, 1)
    held = pool.try_acquire()
    threading.Timer(0.1, pool.release, args=(held,)).start()
    out = bytearray()
    pipeline.run(pool, source(b"abc", 3), out.extend, threaded_side="produce",
                 check_alive=alive)
    assert out == b"abc"
