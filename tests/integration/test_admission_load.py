"""Hostile sockets must neither lock out nor slow down a ticket holder.

A crowd of 900 sockets (500 idle TCP connections, 200 dripping a byte a
second, 200 that complete TLS and never send a head; crowd.py, in its
own process, reconnecting whatever the daemon closes) hammers the TLS
port while a real upload and a real download run over TLS. Each transfer
is measured alone first and then in the crowd, same size, same daemon, in
seven rounds taken in turns: the median of the rounds' ratios (loaded
over alone) must be at least 80%, and the client must never see its connection
refused or reset. On main this test fails at once: every loaded transfer is refused.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import resource
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

# Calibration and seven rounds of four transfers, with the crowd ramping up.
pytestmark = pytest.mark.timeout(400)

MiB = 1024**2
CROWD_SCRIPT = Path(__file__).with_name("crowd.py")
CROWD = {"idle": 500, "drip": 200, "silent": 200}
OTHER_SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
# Wanted: a transfer of about 1-2 s alone on this machine.
TARGET_SECONDS = 1.5
MIN_SIZE, MAX_SIZE = 64 * MiB, 1024 * MiB
ROUNDS = 7  # of alone-then-crowd; the median round's ratio counts
MIN_RATIO = 0.8
SHARED_MIN_RATIO = 0.5
IO_TIMEOUT = 30.0
# The daemon closes what it evicts; the crowd reconnects after this long on
# average, so it churns ~(900 - 64) / RECONNECT_AFTER / 2 sockets a second at
# first, up to twice that (a crowd churning as fast as it can measures how
# fast this machine runs two Python processes, not admission).
RECONNECT_AFTER = 8.0
# Evictions a second while a loaded transfer runs: proof the crowd pressed.
MIN_CHURN = 30
BLOCK = random.Random(9).randbytes(4 * MiB)


class Crowd:
    """crowd.py against the daemon: on() and off() between measurements."""

    def __init__(self, daemon: Daemon, sources: list[str]) -> None:
        argv = [sys.executable, str(CROWD_SCRIPT), str(daemon.port)]
        argv += [f"--{kind}={n}" for kind, n in CROWD.items()]
        argv += [f"--source={s}" for s in sources]
        argv += [f"--reconnect-after={RECONNECT_AFTER}", "--duration=360"]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def _command(self, command: bytes, answer: bytes, timeout: float = 20.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + b"\n")
        self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = b"(nothing)"
        assert line == answer + b"\n", f"crowd answered {line!r} to {command!r}"

    def on(self) -> None:
        self._command(b"on", b"ready")

    def off(self) -> None:
        self._command(b"off", b"off")

    def close(self) -> dict[str, int]:
        """Stop the crowd process; its counters."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        lines = []
        while not self._lines.empty():
            lines.append(self._lines.get())
        assert self.proc.stderr is not None
        assert self.proc.returncode == 0, self.proc.stderr.read()
        last = [line for line in lines if line.strip()][-1]
        return dict(json.loads(last))


def upload(daemon: Daemon, ticket_id: str, size: int) -> float:
    """Seconds to PUT size bytes on a new TLS connection."""
    conn = daemon.https(timeout=IO_TIMEOUT)
    try:
        start = time.monotonic()
        conn.putrequest("PUT", f"/images/{ticket_id}")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        view = memoryview(BLOCK)
        left = size
        while left:
            n = min(left, len(view))
            conn.send(view[:n])
            left -= n
        resp = conn.getresponse()
        body = resp.read()
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    assert resp.status == 200, body
    return elapsed


def download(daemon: Daemon, ticket_id: str, size: int) -> float:
    """Seconds to GET size bytes on a new TLS connection."""
    conn = daemon.https(timeout=IO_TIMEOUT)
    buf = memoryview(bytearray(4 * MiB))
    try:
        start = time.monotonic()
        conn.request("GET", f"/images/{ticket_id}")
        resp = conn.getresponse()
        got = 0
        while n := resp.readinto(buf):
            got += n
        elapsed = time.monotonic() - start
    finally:
        conn.close()
    assert (resp.status, got) == (200, size)
    return elapsed


# What a refused or evicted client sees.
REFUSALS = (ConnectionError, ssl.SSLError, http.client.HTTPException, TimeoutError)


TRANSFERS = (("upload", upload), ("download", download))


def size_for(daemon: Daemon) -> int:
    """A size that takes about TARGET_SECONDS to upload here, alone."""
    ticket_id, _ = daemon.add_ticket(size=MIN_SIZE)
    speed = MIN_SIZE / upload(daemon, ticket_id, MIN_SIZE)
    daemon.result("Ticket.remove", uuid=ticket_id)
    size = int(speed * TARGET_SECONDS) // MiB * MiB
    return max(MIN_SIZE, min(MAX_SIZE, size))


@pytest.fixture(autouse=True)
def enough_descriptors() -> None:
    # The crowd's process raises its own limit; the daemon needs ~400.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


class Measurement(TypedDict):
    """What measure() found; printed whole when a bound is missed."""

    size_mib: int
    ratio: dict[str, float]  # median over rounds of loaded / alone
    refused: list[str]
    failed: list[str]
    crowd: dict[str, int]  # crowd.py's counters
    evicted: int
    evicted_per_s_under_transfer: int
    alone_and_loaded_mib_s: dict[str, list[tuple[int, int]]]


def measure(daemon: Daemon, sources: list[str], attempts: int = 1) -> Measurement:
    """Each transfer alone and then in the crowd, ROUNDS times in turns.

    Neighbours on a shared machine come and go: taking turns gives both
    phases the same chances. A transfer refused or reset is tried again, up
    to attempts times in all; "failed" lists those that never got through.
    """
    size = size_for(daemon)
    ticket_id, _ = daemon.add_ticket(size=size)
    speeds: dict[str, list[tuple[float, float]]] = {"upload": [], "download": []}
    refused: list[str] = []
    failed: list[str] = []
    # Sockets the daemon evicted while a loaded transfer ran, and for how long.
    evicted = 0
    busy = 0.0
    crowd = Crowd(daemon, sources)
    try:
        for _ in range(ROUNDS):
            alone = {name: size / run(daemon, ticket_id, size) / MiB for name, run in TRANSFERS}
            crowd.on()
            # The first reconnects come at once: a moment for them to start.
            time.sleep(1.0)
            for name, run in TRANSFERS:
                before = daemon.evicted()
                for _ in range(attempts):
                    try:
                        seconds = run(daemon, ticket_id, size)
                    except REFUSALS as e:
                        refused.append(f"{name}: {type(e).__name__}: {e}")
                        continue
                    speeds[name].append((alone[name], size / seconds / MiB))
                    evicted += daemon.evicted() - before
                    busy += seconds
                    break
                else:
                    failed.append(name)
            crowd.off()
    finally:
        counts = crowd.close()
    return {
        "size_mib": size // MiB,
        # Each round's loaded run over the run alone just before it, so a
        # neighbour's slow drift cancels out; the median, so one lucky or
        # unlucky run alone (seen: one alone run 20% above the other six)
        # decides nothing.
        "ratio": {
            name: round(statistics.median(c / a for a, c in pairs), 2) if pairs else 0.0
            for name, pairs in speeds.items()
        },
        "refused": refused,
        "failed": failed,
        "crowd": counts,
        "evicted": daemon.evicted(),
        "evicted_per_s_under_transfer": round(evicted / busy) if busy else 0,
        "alone_and_loaded_mib_s": {
            name: [(round(a), round(c)) for a, c in pairs] for name, pairs in speeds.items()
        },
    }


def test_hostile_crowd_from_other_addresses_neither_refuses_nor_slows_transfers(
    make_daemon: MakeDaemon,
) -> None:
    daemon = make_daemon()
    result = measure(daemon, OTHER_SOURCES)
    report = result
    assert result["refused"] == [], report
    assert result["failed"] == [], report
    # The crowd was real: the daemon kept closing its sockets to make room
    # while the transfers ran.
    assert result["crowd"]["closed_by_server"] >= 900, report
    assert result["evicted_per_s_under_transfer"] >= MIN_CHURN, report
    for name, ratio in result["ratio"].items():
        assert ratio >= MIN_RATIO, f"{name} at {ratio:.0%} of its unloaded speed: {report}"
    print(report)


def test_client_sharing_its_address_with_the_crowd(make_daemon: MakeDaemon) -> None:
    """The per-peer cap cannot tell a client from a crowd on its own address.

    The client's new connection is the youngest of its address, so it is
    evicted only if 16 more from that address arrive before its first
    request (with this crowd, about every 50 ms): a reset it may see, and
    retry, as it would any dropped connection. Measured and printed.
    """
    daemon = make_daemon()
    result = measure(daemon, ["127.0.0.1"], attempts=3)
    print(result)
    assert result["crowd"]["closed_by_server"] >= 900, result
    assert result["evicted_per_s_under_transfer"] >= MIN_CHURN, result
    assert result["failed"] == [], result
    # The bar (MIN_RATIO) holds for a crowd on other addresses (the
    # test above). Here the crowd shares the client's peer group, and a
    # client connection may be evicted and retried: the bound only catches
    # a client starved by its own address, not a noisy neighbour's share.
    for name, ratio in result["ratio"].items():
        assert ratio >= SHARED_MIN_RATIO, f"{name} at {ratio:.0%} of its unloaded speed: {result}"
