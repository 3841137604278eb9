"""Client against client: ``vdsm-imageio upload|download`` and ovirt-imageio
2.5.1's ``ovirt_imageio.client`` with the same number of workers, both
against our daemon.

The upload sources are copies on tmpfs when it has room (as the other
client rows' source), so neither client's reads compete with the daemon's
writes for the disk; the qcow2 sources are copies in any case (the nbd
rows' qemu-nbd holds the cached qcow2 open for writing, and qemu's image
locks refuse a second opener). Each run is one process of the client,
timed from its start to its exit (what a user waits for, interpreter
start included for both), with the
client's CPU time from ``getrusage(RUSAGE_CHILDREN)`` around it: the client
and the qemu-nbd it started and reaped, never the daemon. Both clients
send the same requests' worth of work: our client without ``--verify``
(theirs does not verify), both zeroing the holes of an upload, both
writing a raw file on download. Transports are checked after each run:
``unix`` must have used the daemon's unix socket and ``tls`` must not.

Sides are named ``ours`` and ``theirs`` like the daemon rows, so the same
table and JSON carry them; the CPU column of these rows is the client's.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

from . import procs
from .cases import Case, Context, Metric
from .daemons import Daemon
from .harness import CaseResult, GiB, Side

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKERS = 4
TIMEOUT = 1800.0

# (direction, image, transport): image is full or sparse raw, or the full
# or sparse image as qcow2 (upload sources only).
CASES = [
    *(
        ("upload", image, t)
        for image in ("full", "sparse", "full-qcow2", "sparse-qcow2")
        for t in ("unix", "tls")
    ),
    *(("download", image, t) for image in ("full", "sparse") for t in ("unix", "tls")),
]


class ClientError(Exception):
    pass


def case_id(direction: str, image: str, transport: str) -> str:
    return f"client-{direction}-{image}-{transport}"


def case_ids() -> list[str]:
    return [case_id(*c) for c in CASES]


class ClientTransfer(Case):
    """One whole-image transfer by each client, against our daemon."""

    def __init__(self, ctx: Context, direction: str, image: str, transport: str) -> None:
        super().__init__(ctx)
        self.direction, self.image, self.transport = direction, image, transport
        self.id = case_id(direction, image, transport)
        self.metrics = (
            Metric(f"client {direction} {image} {transport} {WORKERS} workers", "MiB/s"),
        )
        self.moved = ctx.images.size

    def source(self) -> Path:
        """The image this case reads: on the server for a download, else a
        copy made by ``prepare``."""
        images = self.ctx.images
        if self.direction == "download":
            return images.full if self.image == "full" else images.sparse
        return self.ctx.scratch.path(f"client-source-{self.image}")

    def prepare_source(self) -> None:
        if self.direction == "download":
            return
        images, dst = self.ctx.images, self.source()
        if self.image == "full":
            shutil.copyfile(images.full, dst)
        elif self.image == "sparse":
            subprocess.run(["cp", "--sparse=always", str(images.sparse), str(dst)], check=True)
        else:
            raw = images.full if self.image == "full-qcow2" else images.sparse
            subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(dst)], check=True)

    def finish(self) -> None:
        if self.direction == "upload":
            self.source().unlink(missing_ok=True)

    def files(self) -> list[Path]:
        return [self.ctx.images.full, self.ctx.images.sparse]


def precompile() -> None:
    """Byte-compile our packages once, as pip does for the reference's: with
    PYTHONDONTWRITEBYTECODE set, every run of our client would compile its
    modules again and be timed doing it."""
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "compileall", "-q"]
        + [str(REPO / name) for name in ("vdsm_imageio", "storage")],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )


def measure_clients(
    case: ClientTransfer, daemon: Daemon, runs: int, cache: procs.PageCache
) -> CaseResult:
    """A B A B: our client, their client, each run on a fresh ticket."""
    precompile()
    started = time.monotonic()
    sides = {"ours": Side(), "theirs": Side()}
    case.prepare_source()
    try:
        _alternate(case, daemon, runs, cache, sides)
    finally:
        case.finish()
    return CaseResult(case, sides, time.monotonic() - started)


def _alternate(
    case: ClientTransfer,
    daemon: Daemon,
    runs: int,
    cache: procs.PageCache,
    sides: dict[str, Side],
) -> None:
    for i in range(runs):
        for name in ("ours", "theirs"):
            side = sides[name]
            if side.status != "ok":
                continue
            log.info("RUN case=%s client=%s run=%d/%d", case.id, name, i + 1, runs)
            try:
                seconds, cpu = _run_once(case, daemon, name, cache)
            except Exception as e:
                log.error("FAILED case=%s client=%s reason=%s", case.id, name, e)
                side.status = f"failed: {str(e)[:120]}"
                continue
            side.values.setdefault(case.metrics[0].name, []).append(case.rate(seconds))
            side.cpu_per_gib.append(cpu / (case.moved / GiB))


def _run_once(
    case: ClientTransfer, daemon: Daemon, name: str, cache: procs.PageCache
) -> tuple[float, float]:
    ctx, size = case.ctx, case.ctx.images.size
    target = ctx.workdir / f"client-{name}.raw"
    if case.direction == "upload":
        target.unlink(missing_ok=True)
        with open(target, "wb") as f:
            f.truncate(size)
        ticket = ctx.add(daemon, target.as_uri(), size, ["read", "write"], sparse=True)
        src, dst = str(case.source()), daemon.data_url + ticket
    else:
        ticket = ctx.add(daemon, case.source().as_uri(), size, ["read"], sparse=True)
        src, dst = daemon.data_url + ticket, str(ctx.scratch.path("client-dst.raw"))
    try:
        cache.drop(case.files())
        if name == "ours":
            argv = _ours(case, daemon, src, dst)
        else:
            argv = _theirs(case, daemon, src, dst)
        seconds, cpu, out, err = _timed(argv)
        _check_transport(case, name, out, err)
        return seconds, cpu
    finally:
        daemon.remove_ticket(ticket)
        ctx.scratch.discard("client-dst.raw")
        target.unlink(missing_ok=True)


def _ours(case: ClientTransfer, daemon: Daemon, src: str, dst: str) -> list[str]:
    argv = [
        str(REPO / ".venv" / "bin" / "vdsm-imageio"),
        case.direction,
        src,
        dst,
        "--cafile",
        str(daemon.ca),
        "--workers",
        str(WORKERS),
        "--no-verify",
        "-v",
    ]
    if case.direction == "upload":
        argv += ["--state-dir", str(case.ctx.workdir / "client-state")]
    else:
        argv += ["--format", "raw", "--overwrite"]
    if case.transport == "tls":
        argv.append("--no-unix-socket")
    return argv


def _theirs(case: ClientTransfer, daemon: Daemon, src: str, dst: str) -> list[str]:
    argv = [
        str(case.ctx.client.python),
        str(HERE / "imageio_driver.py"),
        case.direction,
        src,
        dst,
        "--cafile",
        str(daemon.ca),
        "--workers",
        str(WORKERS),
    ]
    if case.transport == "tls":
        argv.append("--tls")
    return argv


def _timed(argv: list[str]) -> tuple[float, float, str, str]:
    """Wall seconds and CPU seconds of one process and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise ClientError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout, done.stderr


def _check_transport(case: ClientTransfer, name: str, out: str, err: str) -> None:
    if name == "ours":
        if f"transport={case.transport}" not in err:
            raise ClientError(f"our client did not use {case.transport}")
        return
    report = json.loads(out.strip().splitlines()[-1])
    if (report["unix_connections"] > 0) != (case.transport == "unix"):
        raise ClientError(f"their client used the wrong transport: {report}")


def all_cases(ctx: Context) -> list[ClientTransfer]:
    return [ClientTransfer(ctx, *c) for c in CASES]
