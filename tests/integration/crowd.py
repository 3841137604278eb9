"""A crowd of hostile sockets against a TLS port, run as its own process.

Usage: python crowd.py PORT [--idle N] [--drip N] [--silent N]
       [--source ADDR ...] [--reconnect-after SECONDS] [--duration SECONDS]

Commands on stdin, one a line: ``on`` opens the whole crowd and keeps it
up, opening a new socket when the server closes one (after
--reconnect-after seconds on average, spread evenly from at once to twice
that, so the churn is bounded and steady); ``off`` closes every socket and
stops. Each connection comes from one of the source addresses in turn:

- idle: TCP connects and never sends a byte (TLS handshake pending);
- drip: half send a TLS ClientHello one byte per second (handshake
  pending but moving), half complete TLS and send a request head one byte
  per second that never ends (head incomplete but moving);
- silent: complete TLS and never send a head.

Prints ``ready`` once every socket of an ``on`` has connected and, if it
speaks TLS, finished its handshake (or was closed first); ``off`` when
closed; one JSON line of counters when it exits: at end of input (the test
that started it is gone) or after --duration. A separate process, so
that its work does not share the test's interpreter with the client whose
speed is measured.
"""

from __future__ import annotations

import argparse
import heapq
import io
import itertools
import json
import os
import random
import resource
import selectors
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field

TLS_KINDS = ("silent", "drip-head")
HEAD = b"GET /images/00000000-0000-0000-0000-000000000000 HTTP/1.1\r\nHost: x\r\nX-Pad: "


@dataclass
class Slot:
    kind: str
    source: str
    sock: socket.socket | None = None
    state: str = "down"  # down, connecting, handshaking, up
    sent: int = 0
    events: int = 0
    settled: bool = False


@dataclass
class Crowd:
    port: int
    reconnect_after: float
    hello: bytes
    ctx: ssl.SSLContext
    active: bool = False
    sel: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)
    timers: list[tuple[float, int, str, Slot]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("connects", "connected", "handshakes", "closed_by_server", "connect_failed"), 0
        )
    )

    def at(self, when: float, what: str, slot: Slot) -> None:
        heapq.heappush(self.timers, (when, next(self.seq), what, slot))

    def connect(self, slot: Slot) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((slot.source, 0))
        self.counts["connects"] += 1
        err = sock.connect_ex(("127.0.0.1", self.port))
        slot.sock, slot.state, slot.sent = sock, "connecting", 0
        if err not in (0, 115):  # EINPROGRESS
            self.lost(slot, "connect_failed")
            return
        self.watch(slot, selectors.EVENT_WRITE)

    def watch(self, slot: Slot, events: int) -> None:
        assert slot.sock is not None
        if slot.events == 0:
            self.sel.register(slot.sock, events, slot)
        elif slot.events != events:
            self.sel.modify(slot.sock, events, slot)
        slot.events = events

    def lost(self, slot: Slot, why: str) -> None:
        self.counts[why] += 1
        slot.settled = True
        self.drop(slot)
        if self.active:
            # Spread from at once to twice the mean: the churn is steady
            # from the first evictions on, not a wave a mean later.
            delay = self.reconnect_after * random.uniform(0.0, 2.0)
            self.at(time.monotonic() + delay, "connect", slot)

    def drop(self, slot: Slot) -> None:
        if slot.sock is not None:
            if slot.events:
                self.sel.unregister(slot.sock)
            slot.sock.close()
        slot.sock, slot.state, slot.events = None, "down", 0

    def on(self, slots: list[Slot]) -> None:
        self.active = True
        for slot in slots:
            slot.settled = False
            self.connect(slot)

    def off(self, slots: list[Slot]) -> None:
        self.active = False
        self.timers.clear()
        for slot in slots:
            self.drop(slot)

    def ready(self, slot: Slot) -> None:
        sock = slot.sock
        assert sock is not None
        try:
            if slot.state == "connecting":
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.lost(slot, "connect_failed")
                    return
                self.counts["connected"] += 1
                # A TLS socket is settled once its handshake is done.
                slot.settled = slot.kind not in TLS_KINDS
                if slot.kind in TLS_KINDS:
                    slot.sock = self.ctx.wrap_socket(
                        sock, server_hostname="localhost", do_handshake_on_connect=False
                    )
                    self.sel.unregister(sock)
                    slot.events = 0
                    slot.state = "handshaking"
                else:
                    slot.state = "up"
                    self.watch(slot, selectors.EVENT_READ)
                    if slot.kind == "drip-hello":
                        self.at(time.monotonic() + 1, "drip", slot)
                    return
            if slot.state == "handshaking":
                tls_sock = slot.sock
                assert isinstance(tls_sock, ssl.SSLSocket)
                try:
                    tls_sock.do_handshake()
                except ssl.SSLWantReadError:
                    self.watch(slot, selectors.EVENT_READ)
                    return
                except ssl.SSLWantWriteError:
                    self.watch(slot, selectors.EVENT_WRITE)
                    return
                self.counts["handshakes"] += 1
                slot.settled = True
                slot.state = "up"
                self.watch(slot, selectors.EVENT_READ)
                if slot.kind == "drip-head":
                    self.at(time.monotonic() + 1, "drip", slot)
                return
            # Up: anything readable is the server's close (or TLS chatter).
            up = slot.sock
            assert up is not None
            while True:
                if not up.recv(65536):
                    self.lost(slot, "closed_by_server")
                    return
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        except OSError:
            self.lost(slot, "closed_by_server")

    def drip(self, slot: Slot) -> None:
        if not self.active or slot.state != "up" or slot.sock is None:
            return
        data = self.hello if slot.kind == "drip-hello" else HEAD
        byte = data[slot.sent : slot.sent + 1] or b"a"
        try:
            slot.sock.send(byte)
        except (ssl.SSLWantWriteError, BlockingIOError):
            pass
        except OSError:
            self.lost(slot, "closed_by_server")
            return
        slot.sent += 1
        self.at(time.monotonic() + 1, "drip", slot)


def client_hello() -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--idle", type=int, default=500)
    p.add_argument("--drip", type=int, default=200)
    p.add_argument("--silent", type=int, default=200)
    p.add_argument("--source", action="append", default=[])
    p.add_argument("--reconnect-after", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=60.0)
    args = p.parse_args()
    # On a network the crowd's work is done by other machines; here it
    # takes only the CPU time nobody else wants, so that what the
    # measurement sees is what the daemon does about the crowd.
    os.nice(19)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * (args.idle + args.drip + args.silent) + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    crowd = Crowd(args.port, args.reconnect_after, client_hello(), ctx)
    kinds = (
        ["idle"] * args.idle
        + ["drip-hello", "drip-head"] * (args.drip // 2)
        + ["drip-hello"] * (args.drip % 2)
        + ["silent"] * args.silent
    )
    sources = itertools.cycle(args.source or ["127.0.0.1"])
    slots = [Slot(kind, next(sources)) for kind in kinds]
    stdin = sys.stdin.buffer
    # A pipe from the test: read1 returns what one read gives, never waits for more.
    assert isinstance(stdin, io.BufferedReader)
    crowd.sel.register(sys.stdin, selectors.EVENT_READ, None)
    commands = b""
    announced = True
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        now = time.monotonic()
        while crowd.timers and crowd.timers[0][0] <= now:
            _, _, what, slot = heapq.heappop(crowd.timers)
            if what == "connect" and slot.state == "down":
                crowd.connect(slot)
            elif what == "drip":
                crowd.drip(slot)
        timeout = min(0.5, max(0.0, crowd.timers[0][0] - now)) if crowd.timers else 0.5
        for key, _ in crowd.sel.select(timeout):
            if key.data is None:
                data = stdin.read1(64)
                if not data:
                    end = 0.0
                commands += data
                while b"\n" in commands:
                    command, commands = commands.split(b"\n", 1)
                    if command == b"on":
                        crowd.on(slots)
                        announced = False
                    elif command == b"off":
                        crowd.off(slots)
                        print("off", flush=True)
                continue
            slot = key.data
            if slot.sock is not None and key.fileobj is slot.sock:
                crowd.ready(slot)
        if not announced and all(s.settled for s in slots):
            print("ready", flush=True)
            announced = True
    crowd.off(slots)
    print(json.dumps(crowd.counts), flush=True)


if __name__ == "__main__":
    main()
