"""Splicing downloads: file (O_DIRECT) -> pipe -> socket, no user-space copy."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.errors import detail
from vdsm_imageio import zerocopy
from vdsm_imageio.backends.file import FileBackend, open_file
from vdsm_imageio.backends.sectorlock import SectorLocks
from vdsm_imageio.errors import BackendError, ImageEnded, PeerClosed, TicketCanceled
from vdsm_imageio.stall import Stall

MiB = 1024**2


def io_threads() -> list[threading.Thread]:
    """Helper threads of the data path still alive (other tests may own others)."""
    return [t for t in threading.enumerate() if t.name.startswith("io-")]


@pytest.fixture
def image(tmp_path: Path) -> str:
    if (
        subprocess.run(
            ["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True
        ).stdout.strip()
        == "tmpfs"
    ):
        pytest.fail("tmp_path must be on a disk file system for O_DIRECT")
    path = tmp_path / "image.raw"
    path.write_bytes(os.urandom(5 * MiB))
    return str(path)


def receive(sock: socket.socket, out: list[int | str]) -> None:
    h = hashlib.sha256()
    while chunk := sock.recv(MiB):
        h.update(chunk)
        out.append(len(chunk))
    out.append(h.hexdigest())


def run_send(
    path: str,
    offset: int,
    length: int,
    progress: Callable[[int], None] | None = None,
    timeout: float = 10.0,
    lanes: int = zerocopy.LANES,
    splicer: zerocopy.Splicer | None = None,
) -> tuple[list[int | str], list[int]]:
    a, b = socket.socketpair()
    out: list[int | str] = []
    reader = threading.Thread(target=receive, args=(b, out))
    reader.start()
    done: list[int] = []
    try:
        with open_file(path, mode="r", sparse=False, locks=SectorLocks()) as backend:
            fd = backend.splice_source(offset, length)
            assert fd is not None
            a.settimeout(timeout)
            if splicer is None:
                zerocopy.send(fd, offset, length, a, progress or done.append, lanes=lanes)
            else:
                splicer.send(fd, offset, length, a, progress or done.append, lanes=lanes)
    finally:
        a.close()
        reader.join(10)
        b.close()
    return out, done


def test_spliced_range_arrives_intact(image: str) -> None:
    with open(image, "rb") as f:
        f.seek(MiB)
        expected = hashlib.sha256(f.read(3 * MiB)).hexdigest()
    out, progress = run_send(image, MiB, 3 * MiB)
    assert out[-1] == expected
    assert sum(progress) == 3 * MiB


@pytest.mark.parametrize("lanes", [1, 2, 3])
@pytest.mark.parametrize("offset, length", [(0, 5 * MiB), (4096, 4 * MiB - 8192), (MiB, 4096)])
def test_segments_from_every_lane_arrive_in_order(
    image: str, lanes: int, offset: int, length: int
) -> None:
    with open(image, "rb") as f:
        f.seek(offset)
        expected = hashlib.sha256(f.read(length)).hexdigest()
    out, progress = run_send(image, offset, length, lanes=lanes)
    assert out[-1] == expected
    assert sum(progress) == length
    assert not io_threads()


def sha256_of(path: str, offset: int, length: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(length)).hexdigest()


def test_splicer_keeps_its_helpers_between_downloads(image: str) -> None:
    splicer = zerocopy.Splicer()
    seen = []
    try:
        for i in range(8):
            offset, length = (i % 4) * MiB, MiB + (i % 3) * MiB // 2
            out, _ = run_send(image, offset, length, splicer=splicer)
            assert out[-1] == sha256_of(image, offset, length)
            seen.append({t.ident for t in io_threads()})
    finally:
        splicer.close()
    # The same helpers, one per lane, served every download.
    assert len(seen[0]) == zerocopy.LANES
    assert all(s == seen[0] for s in seen)
    assert not io_threads()


def test_splicer_recovers_after_a_failed_download(image: str) -> None:
    def cancel_after_a_segment(n: int) -> None:
        raise TicketCanceled(transfer_id="t")

    splicer = zerocopy.Splicer()
    try:
        with pytest.raises(TicketCanceled):
            run_send(image, 0, 5 * MiB, progress=cancel_after_a_segment, splicer=splicer)
        # Whatever the canceled download left in its pipes never reaches
        # the next one.
        out, progress = run_send(image, MiB, 3 * MiB, splicer=splicer)
        assert out[-1] == sha256_of(image, MiB, 3 * MiB)
        assert sum(progress) == 3 * MiB
    finally:
        splicer.close()
    assert not io_threads()


def test_splice_leaves_nothing_in_page_cache(image: str) -> None:
    fd = os.open(image, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    run_send(image, 0, 5 * MiB)
    res = subprocess.run(
        ["fincore", "--raw", "--noheadings", "-o", "PAGES", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(res.strip()) == 0


def test_unaligned_range_is_not_spliced(image: str) -> None:
    with open_file(image, mode="r", sparse=False, locks=SectorLocks()) as backend:
        assert backend.splice_source(100, MiB) is None
        assert backend.splice_source(0, MiB + 1) is None
        assert backend.splice_source(4096, MiB) is not None


def test_range_past_end_of_image_is_backend_error(image: str) -> None:
    with pytest.raises(BackendError):
        run_send(image, 4 * MiB, 2 * MiB)
    assert not io_threads()


def test_cancel_from_progress_stops_the_helper(image: str) -> None:
    seen: list[int] = []

    def progress(n: int) -> None:
        seen.append(n)
        if sum(seen) >= MiB:
            raise TicketCanceled(transfer_id="t")

    with pytest.raises(TicketCanceled):
        run_send(image, 0, 5 * MiB, progress=progress)
    assert not io_threads()


def spliceable(backend: FileBackend, offset: int, length: int) -> int:
    fd = backend.splice_source(offset, length)
    assert fd is not None, "an aligned range of a file opened for direct I/O splices"
    return fd


def test_client_that_stops_reading_times_out(image: str) -> None:
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        a.settimeout(0.3)
        with (
            open_file(image, mode="r", sparse=False, locks=SectorLocks()) as backend,
            pytest.raises(PeerClosed, match="timed out"),
        ):
            zerocopy.send(spliceable(backend, 0, 5 * MiB), 0, 5 * MiB, a, lambda n: None)
        # The connection keeps its own timeout afterwards.
        assert a.gettimeout() == 0.3
        assert not os.get_blocking(a.fileno())
    finally:
        a.close()
        b.close()
    assert not io_threads()


def test_closed_client_is_peer_closed(image: str) -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        with (
            open_file(image, mode="r", sparse=False, locks=SectorLocks()) as backend,
            pytest.raises(PeerClosed),
        ):
            zerocopy.send(spliceable(backend, 0, 5 * MiB), 0, 5 * MiB, a, lambda n: None)
    finally:
        a.close()


def test_timeval_rounds_a_limit_up_and_none_waits_forever() -> None:
    import struct

    from vdsm_imageio.sockets import timeval

    assert timeval(None) == struct.pack("ll", 0, 0)
    assert timeval(2.5) == struct.pack("ll", 2, 500_000)
    # Zero would mean no limit to the kernel.
    assert timeval(1e-9) == struct.pack("ll", 0, 1)


# Data that ends before the range: never a short body that passes for whole.


def send_from_fills(
    fills: list[zerocopy.Fill], length: int, timeout: float = 10.0
) -> list[int | str]:
    """zerocopy.send_from into a socketpair; the bytes the reader got, or
    the error send_from raised."""
    a, b = socket.socketpair()
    out: list[int | str] = []
    reader = threading.Thread(target=receive, args=(b, out))
    reader.start()
    try:
        a.settimeout(timeout)
        zerocopy.send_from(fills, 0, length, a, lambda n: None)
    finally:
        a.close()
        reader.join(10)
        b.close()
    return out


def pattern_fill(wfd: int, pos: int, n: int) -> int:
    data = bytes((pos + i) % 251 for i in range(n))
    view = memoryview(data)
    while view:
        view = view[os.write(wfd, view) :]
    return n


def test_lane_that_puts_less_than_asked_is_image_ended() -> None:
    def short_fill(wfd: int, pos: int, n: int) -> int:
        # The last segment comes up short and the lane ends without an error.
        return pattern_fill(wfd, pos, n if pos + n < 3 * MiB else n // 2)

    with pytest.raises(ImageEnded) as e:
        send_from_fills([short_fill, short_fill], 3 * MiB)
    assert e.value.fields["end"] == 3 * MiB
    assert 2 * MiB <= detail(e.value, "offset", int) < 3 * MiB
    assert not io_threads()


def test_unexpected_error_in_a_lane_reaches_the_request() -> None:
    def broken_fill(wfd: int, pos: int, n: int) -> int:
        if pos >= MiB:
            raise RuntimeError("bug in a fill")
        return pattern_fill(wfd, pos, n)

    with pytest.raises(RuntimeError, match="bug in a fill"):
        send_from_fills([broken_fill, broken_fill], 3 * MiB)
    assert not io_threads()


def test_file_shorter_than_the_range_is_image_ended(image: str) -> None:
    os.truncate(image, 3 * MiB + 512)
    with pytest.raises(ImageEnded) as e:
        run_send(image, 0, 5 * MiB)
    assert e.value.fields == {"offset": 3 * MiB + 512, "end": 5 * MiB}
    assert not io_threads()


# The stall: from the client's last byte, not from the last partial splice.

T = 2.0


def limit_of(stall: Stall, now: float) -> float:
    limit = stall.wait_limit(now)
    assert limit is not None, "a stall with a timeout has a limit"
    return limit


def test_stall_waits_in_slices_of_the_timeout() -> None:
    step = T / Stall.SLICES
    stall = Stall(T, now=100.0)
    assert stall.wait_limit(100.0) == step
    # Sends that nothing came back from (EAGAIN) leave the stall running.
    assert stall.wait_limit(100.0 + T - step / 2) == pytest.approx(step / 2)
    assert limit_of(stall, 100.0 + T) <= 0


def test_send_that_moved_all_it_was_asked_restarts_the_stall() -> None:
    step = T / Stall.SLICES
    stall = Stall(T, now=100.0)
    stall.sent(started=101.0, now=101.5, moved=MiB, asked=MiB, limit=step)
    assert stall.wait_limit(101.5 + T - 0.1) == pytest.approx(0.1)


def test_short_send_that_returned_before_its_limit_restarts_the_stall() -> None:
    # The pipe ran dry: the client took everything there was.
    step = T / Stall.SLICES
    stall = Stall(T, now=100.0)
    stall.sent(started=101.0, now=101.0 + step / 2, moved=4096, asked=MiB, limit=step)
    assert stall.wait_limit(101.0 + step / 2 + T - 0.1) == pytest.approx(0.1)


def test_short_send_that_waited_out_its_limit_counts_the_wait_as_stall() -> None:
    # The bytes went at the start of a wait that lasted the whole limit:
    # the client has taken nothing since then.
    step = T / Stall.SLICES
    stall = Stall(T, now=100.0)
    stall.sent(started=101.0, now=101.0 + step, moved=4096, asked=MiB, limit=step)
    assert limit_of(stall, 101.0 + T) <= 0
    assert stall.wait_limit(101.0 + T - 0.1) == pytest.approx(0.1)


def test_slice_is_bounded_for_long_timeouts() -> None:
    assert Stall(3600.0, now=0.0).wait_limit(0.0) == Stall.MAX_SLICE


def test_no_timeout_waits_forever() -> None:
    stall = Stall(None, now=0.0)
    assert stall.wait_limit(1e9) is None
    stall.sent(started=0.0, now=1.0, moved=1, asked=2, limit=None)
    assert stall.wait_limit(1e9) is None
