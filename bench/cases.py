"""The benchmark cases: what each one sets up, runs and measures.

A case prepares tickets (outside the measured window), runs once against
one daemon and returns its metrics; the harness alternates daemons, drops
the page cache and reads the daemon's CPU time around ``run``. ``moved``
is the image bytes one run transfers, for CPU seconds per GiB (0: the case
moves no meaningful volume). ``sides`` names the daemons a case runs
against: ours and the reference, and for the nbd download also ours
without the hand-written NBD reader.
"""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import clients, procs
from .daemons import LIBNBD_ONLY, Daemon
from .images import Images, Scratch

MiB = 1024**2


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_better: bool = True


@dataclass
class Context:
    images: Images
    scratch: Scratch
    client: clients.ImageioClient
    workdir: Path
    random_count: int
    random_seconds: float
    latency_count: int
    nbd_url: str | None = None

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)

    def ticket(self, url: str, size: int, ops: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "uuid": str(uuid.uuid4()),
            "size": size,
            "ops": ops,
            "timeout": 3600,
            "url": url,
            "transfer_id": f"bench-{next(self._ids)}",
            **extra,
        }

    def add(self, d: Daemon, url: str, size: int, ops: list[str], **extra: Any) -> str:
        t = self.ticket(url, size, ops, **extra)
        d.add_ticket(t)
        return str(t["uuid"])


class Case:
    id = ""
    metrics: tuple[Metric, ...] = ()
    moved = 0
    drop_cache = True
    transport: str | None = None
    runs: int | None = None
    sides: tuple[str, ...] = ("ours", "theirs")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def unsupported(self, d: Daemon) -> str | None:
        return None

    def prepare(self, d: Daemon) -> list[str]:
        """Ticket ids for run(); removed by cleanup()."""
        return []

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        raise NotImplementedError

    def cleanup(self, d: Daemon, tickets: list[str]) -> None:
        for t in tickets:
            d.remove_ticket(t)

    def rate(self, seconds: float) -> float:
        return self.moved / MiB / seconds


class Transfer(Case):
    """One whole-image transfer over one transport; source is 'file' or 'nbd'."""

    def __init__(
        self, ctx: Context, *, direction: str, transport: str, tool: str, source: str = "file"
    ) -> None:
        super().__init__(ctx)
        self.direction, self.via, self.tool, self.source = direction, transport, tool, source
        self.transport = transport
        self.id = transfer_id(direction, transport, tool, source)
        what = f"{direction} {transport} {tool}" + (" 4 workers" if tool == "client" else "")
        name = f"nbd {what}" if source == "nbd" else what
        self.metrics = (Metric(name, "MiB/s"),)
        if (direction, transport, tool, source) == ("download", "unix", "curl", "file"):
            self.metrics += (Metric("page cache after download", "%", False),)
        if self.id == NBDWIRE_CASE:
            # The only download nbdwire serves (it splices into the unix socket).
            self.sides = ("ours", "theirs", LIBNBD_ONLY)
        self.moved = ctx.images.size

    def unsupported(self, d: Daemon) -> str | None:
        if self.source == "nbd" and self.ctx.nbd_url is None:
            return "n/a (qemu-nbd not available)"
        if self.source == "nbd":
            return nbd_support(self.ctx, d)
        return None

    def _target(self, d: Daemon) -> Path:
        return self.ctx.workdir / f"upload-{d.name}.raw"

    def prepare(self, d: Daemon) -> list[str]:
        size = self.ctx.images.size
        if self.source == "nbd":
            assert self.ctx.nbd_url is not None
            url = self.ctx.nbd_url
        elif self.direction == "download":
            url = self.ctx.images.full.as_uri()
        else:
            target = self._target(d)
            target.unlink(missing_ok=True)
            with open(target, "wb") as f:
                f.truncate(size)
            url = target.as_uri()
        ops = ["read"] if self.direction == "download" else ["read", "write"]
        return [self.ctx.add(d, url, size, ops)]

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        t, scratch = tickets[0], self.ctx.scratch
        started = time.monotonic()
        if self.tool == "curl" and self.direction == "download":
            clients.curl_download(d, t, self.via, self.moved)
        elif self.tool == "curl":
            clients.curl_upload(d, t, self.via, scratch.upload_source)
        elif self.direction == "download":
            seconds = self.ctx.client.download(d, t, self.via, scratch.path("dst.raw"))
            scratch.discard("dst.raw")
        else:
            seconds = self.ctx.client.upload(d, t, self.via, scratch.upload_source)
        if self.tool == "curl":
            seconds = time.monotonic() - started
        out = {self.metrics[0].name: self.rate(seconds)}
        if len(self.metrics) > 1:
            out[self.metrics[1].name] = 100 * procs.cached_fraction(self.ctx.images.full)
        return out

    def cleanup(self, d: Daemon, tickets: list[str]) -> None:
        super().cleanup(d, tickets)
        if self.direction == "upload" and self.source == "file":
            self._target(d).unlink(missing_ok=True)


def nbd_support(ctx: Context, d: Daemon) -> str | None:
    """None if the daemon serves a 4 KiB read from an nbd:unix: ticket."""
    assert ctx.nbd_url is not None
    try:
        t = ctx.add(d, ctx.nbd_url, ctx.images.size, ["read"])
    except Exception as e:
        return f"n/a (not supported: {str(e)[:60]})"
    try:
        clients.curl_download(d, t, "unix", 4096, start=4096)
    except clients.ClientError as e:
        return f"n/a (not supported: {str(e)[:60]})"
    finally:
        d.remove_ticket(t)
    return None


class SparseDownload(Case):
    id = "sparse-download-client"
    metrics = (Metric("sparse download unix client (image size/s)", "MiB/s"),)
    transport = "unix"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.moved = ctx.images.size

    def prepare(self, d: Daemon) -> list[str]:
        return [
            self.ctx.add(
                d, self.ctx.images.sparse.as_uri(), self.ctx.images.size, ["read"], sparse=True
            )
        ]

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        seconds = self.ctx.client.download(
            d, tickets[0], "unix", self.ctx.scratch.path("sparse.raw")
        )
        self.ctx.scratch.discard("sparse.raw")
        return {self.metrics[0].name: self.rate(seconds)}


class Checksum(Case):
    """GET /images/<ticket>/checksum of a whole image over the unix socket.

    Both daemons must agree on the digest: a run whose checksum differs
    from the other daemon's fails instead of reporting a rate.
    """

    transport = None  # no data crosses the socket; the CPU target is for transfers

    def __init__(self, ctx: Context, *, image: str) -> None:
        super().__init__(ctx)
        self.image = image
        self.id = f"checksum-{image}"
        self.metrics = (Metric(f"checksum {image} image unix (image size/s)", "MiB/s"),)
        self.moved = ctx.images.size
        self.digests: dict[str, str] = {}

    def _path(self) -> Path:
        return self.ctx.images.full if self.image == "full" else self.ctx.images.sparse

    def prepare(self, d: Daemon) -> list[str]:
        return [self.ctx.add(d, self._path().as_uri(), self.ctx.images.size, ["read"])]

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        seconds, digest = clients.checksum(d, tickets[0])
        self.digests.setdefault(d.name, digest)
        if len(set(self.digests.values())) > 1:
            raise clients.ClientError(f"the daemons disagree: {self.digests}")
        return {self.metrics[0].name: self.rate(seconds)}


class RandomReads(Case):
    id = "random-4k-reads"
    metrics = (Metric("4 KiB random reads, 1 connection, unix", "req/s"),)

    def prepare(self, d: Daemon) -> list[str]:
        return [self.ctx.add(d, self.ctx.images.full.as_uri(), self.ctx.images.size, ["read"])]

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        rate = clients.random_reads(
            d,
            tickets[0],
            self.ctx.images.size,
            count=self.ctx.random_count,
            seconds=self.ctx.random_seconds,
        )
        return {self.metrics[0].name: rate}


class ConcurrentDownloads(Case):
    """32 downloads at once, one ticket each, of distinct ranges of the
    image (half of it in total), so no range is read twice."""

    id = "concurrent-downloads"
    count = 32
    metrics = (Metric("32 concurrent downloads unix curl (total)", "MiB/s"),)
    transport = "unix"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.length = ctx.images.size // 2 // self.count // 4096 * 4096
        self.moved = self.length * self.count

    def prepare(self, d: Daemon) -> list[str]:
        url = self.ctx.images.full.as_uri()
        return [self.ctx.add(d, url, self.ctx.images.size, ["read"]) for _ in range(self.count)]

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        jobs = [(t, i * self.length, self.length) for i, t in enumerate(tickets)]
        started = time.monotonic()
        clients.curl_download_many(d, jobs)
        return {self.metrics[0].name: self.rate(time.monotonic() - started)}


class TicketLatency(Case):
    id = "ticket-latency"
    metrics = (Metric("ticket add+remove over the control socket (median)", "ms", False),)
    drop_cache = False

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        url = self.ctx.images.full.as_uri()
        times = []
        for _ in range(self.ctx.latency_count):
            t = self.ctx.ticket(url, self.ctx.images.size, ["read"])
            started = time.monotonic()
            d.add_ticket(t)
            d.remove_ticket(t["uuid"])
            times.append(time.monotonic() - started)
        return {self.metrics[0].name: 1000 * statistics.median(times)}


class Lifecycle(Case):
    """SIGTERM to exit of an idle daemon, then start to the first OPTIONS."""

    id = "lifecycle"
    metrics = (
        Metric("SIGTERM to exit (idle)", "s", False),
        Metric("start to first OPTIONS over TLS", "s", False),
    )
    drop_cache = False

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        stop = d.stop()
        d.start()
        return {self.metrics[0].name: stop, self.metrics[1].name: d.startup_seconds}


class PeakRss(Case):
    """64 connections (8 tickets x 8) downloading distinct ranges at once,
    each read at full speed by its own curl; the daemon's VmHWM after."""

    id = "peak-rss"
    metrics = (Metric("peak RSS with 64 connections downloading", "MiB", False),)
    drop_cache = False
    tickets, per_ticket = 8, 8

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        count = self.tickets * self.per_ticket
        # Long enough that every connection is still running when the last
        # one starts, bounded so a run takes seconds.
        self.length = min(64 * MiB, ctx.images.size // count) // 4096 * 4096

    def prepare(self, d: Daemon) -> list[str]:
        url = self.ctx.images.full.as_uri()
        return [self.ctx.add(d, url, self.ctx.images.size, ["read"]) for _ in range(self.tickets)]

    def run(self, d: Daemon, tickets: list[str]) -> dict[str, float]:
        if not procs.reset_peak_rss(d.pid):
            raise RuntimeError("cannot reset VmHWM (/proc/<pid>/clear_refs)")
        jobs = [
            (t, (i * self.per_ticket + j) * self.length, self.length)
            for i, t in enumerate(tickets)
            for j in range(self.per_ticket)
        ]
        clients.curl_download_many(d, jobs)
        return {self.metrics[0].name: procs.status_kib(d.pid, "VmHWM") / 1024}


def transfer_id(direction: str, transport: str, tool: str, source: str) -> str:
    prefix = "nbd-" if source == "nbd" else ""
    return f"{prefix}{direction}-{transport}-{tool}"


# The case that measures nbdwire against libnbd alone (DESIGN section 3).
NBDWIRE_CASE = transfer_id("download", "unix", "curl", "nbd")


# (direction, transport, tool, source) of the whole-image transfer cases.
TRANSFERS = [
    *(
        (d, t, tool, "file")
        for tool in ("curl", "client")
        for d in ("download", "upload")
        for t in ("unix", "tls")
    ),
    ("download", "unix", "curl", "nbd"),
    ("upload", "unix", "curl", "nbd"),
]
OTHERS: list[type[Case]] = [
    SparseDownload,
    RandomReads,
    ConcurrentDownloads,
    TicketLatency,
    Lifecycle,
    PeakRss,
]


# The images of the checksum cases (bench.images).
CHECKSUMS = ["full", "sparse"]


def case_ids() -> list[str]:
    return (
        [transfer_id(*t) for t in TRANSFERS]
        + [c.id for c in OTHERS]
        + [f"checksum-{image}" for image in CHECKSUMS]
    )


def all_cases(ctx: Context) -> list[Case]:
    cases: list[Case] = [
        Transfer(ctx, direction=d, transport=t, tool=tool, source=src)
        for d, t, tool, src in TRANSFERS
    ]
    cases += [c(ctx) for c in OTHERS]
    return cases + [Checksum(ctx, image=image) for image in CHECKSUMS]
