"""The lobby's pure helpers: where a request head ends, how peers are named."""

from __future__ import annotations

import logging
import socket
from collections.abc import Hashable

import pytest

from tests.support.clock import FakeClock
from vdsm_imageio.http.admission import BUDGET, PER_PEER, Eviction
from vdsm_imageio.http.listeners import Listener
from vdsm_imageio.http.lobby import EvictionLog, _blank_line, peer_name


@pytest.mark.parametrize(
    "parts,complete",
    [
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n"], False),
        # The empty line split across reads, at every place.
        ([b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"\n"], True),
        # Bare LF lines end a head too; the parser then judges them.
        ([b"GET / HTTP/1.1\nHost: x\n", b"\n"], True),
        ([b"G", b"E", b"T", b" "], False),
    ],
)
def test_blank_line_is_found_across_reads(parts: list[bytes], complete: bool) -> None:
    head = bytearray()
    found = False
    for part in parts:
        start = max(0, len(head) - 2)
        head += part
        found = found or _blank_line(head, start)
    assert found is complete


def test_peer_names() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        listener = Listener(sock, "unix", None)
        assert peer_name(("127.0.0.2", 4000), listener) == "127.0.0.2:4000"
        assert peer_name(("::1", 4000, 0, 0), listener) == "[::1]:4000"
        assert peer_name("", listener) == "unix"


def eviction(reason: str = BUDGET) -> Eviction[Hashable]:
    return Eviction("conn", "127.0.0.2", reason, 64, 1.5)


def evicted_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("EVICTED")]


def test_evictions_are_logged_one_by_one_up_to_the_burst(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    evictions = EvictionLog(burst=3, clock=FakeClock(100.0))
    for _ in range(3):
        evictions.evicted("127.0.0.2:5000", eviction())
    assert (
        evicted_lines(caplog)
        == [
            "EVICTED peer=127.0.0.2:5000 reason=max_unauthenticated limit=64 "
            "group=127.0.0.2 age=1.5s"
        ]
        * 3
    )
    assert evictions.due() is None


def test_evictions_past_the_burst_are_counted_and_summed_up_once_a_window(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock(100.0)
    evictions = EvictionLog(burst=2, window=1.0, clock=clock)
    for reason in (BUDGET, BUDGET, BUDGET, PER_PEER, BUDGET):
        evictions.evicted("127.0.0.2:5000", eviction(reason))
    assert len(evicted_lines(caplog)) == 2
    assert evictions.due() == 101.0
    evictions.flush()
    assert len(evicted_lines(caplog)) == 2
    clock.now = 101.0
    evictions.flush()
    assert evicted_lines(caplog)[2:] == [
        "EVICTED count=3 max_unauthenticated=2 max_unauthenticated_per_peer=1 "
        "window=1s (past 2 a second, counted, not listed)"
    ]
    # A new window logs one by one again.
    evictions.evicted("127.0.0.2:5000", eviction())
    assert evicted_lines(caplog)[3].startswith("EVICTED peer=")
    assert evictions.due() is None


def test_a_forced_flush_writes_the_counts_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    evictions = EvictionLog(burst=0, clock=FakeClock(100.0))
    evictions.evicted("127.0.0.2:5000", eviction())
    evictions.flush(force=True)
    assert evicted_lines(caplog) == [
        "EVICTED count=1 max_unauthenticated=1 window=0s (past 0 a second, counted, not listed)"
    ]
