"""One profile of a bench run: its storage, its daemons, its references,
its cases, and the JSON that records them.

Everything a profile starts (the fast file system, the daemons, qemu-nbd)
is owned by one ExitStack and stopped in reverse order when the profile
ends, fails or is interrupted, so the file system is unmounted only after
every process that had files open on it has exited.
"""

from __future__ import annotations

import argparse
import compileall
import logging
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import clientbench, physical, procs, profiles, proxybench, report
from . import images as imagesmod
from .cases import NBDWIRE_CASE, Context, all_cases, case_ids
from .clients import ImageioClient
from .daemons import BEFORE, Daemon, Ours, Theirs
from .harness import CaseResult, measure
from .nbdserver import QemuNbd

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
REF_VENV = REPO / ".cache" / "ovirt-imageio-venv"
MiB = 1024**2
# Buffer of the physical references when the daemons run their defaults
# (ovirt-imageio's 8 MiB; the references measure the machine, not a daemon).
REF_BUFFER = 8 * MiB


@dataclass
class ProfileRun:
    name: str
    path: Path
    title: str = ""
    seconds: float = 0.0
    skipped: str | None = None
    results: list[CaseResult] = field(default_factory=list)
    refs: dict[str, float] = field(default_factory=dict)
    targets: list[report.Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def select(ids: list[str], spec: str) -> list[str]:
    """The case ids named by spec (ids or id prefixes); all when empty."""
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        return ids
    unknown = [w for w in wanted if not any(i.startswith(w) for i in ids)]
    if unknown:
        raise SystemExit(f"unknown case ids: {', '.join(unknown)} (see --list)")
    return [i for i in ids if any(i.startswith(w) for w in wanted)]


def run_profile(
    args: argparse.Namespace,
    name: str,
    disk_images: imagesmod.Images,
    scratch: imagesmod.Scratch,
    stamp: str,
) -> ProfileRun:
    started = time.monotonic()
    load_start = os.getloadavg()
    tag = imagesmod.size_tag(args.size)
    run = ProfileRun(name, path=args.results / f"bench-{stamp}-{name}-{tag}.json")
    meta: dict[str, Any] = {
        "stamp": stamp,
        "profile": name,
        "code": _code(),
        "config": _config(args),
    }
    need = profiles.fast_bytes(args.size, disk_images.sparse_data)
    reason = profiles.room(need, args.shm) if name == "fast" else None
    if reason:
        log.warning("SKIP profile=fast reason=%s", reason)
        run.skipped, run.title = reason, "skipped"
        meta.update(skipped=reason, host=_host(load_start, os.getloadavg()))
        report.write_json(run.path, {"schema": report.SCHEMA, **meta})
        return run
    with ExitStack() as stack:
        if name == "fast":
            storage = stack.enter_context(profiles.fast(need, base=args.shm))
            log.info("COPY images to=%s", storage.root)
            images = imagesmod.copy(disk_images, storage.root / "images")
        else:
            storage = stack.enter_context(profiles.disk(args.dir))
            images = disk_images
        cache = procs.PageCache()
        daemons = _measure(args, run, storage, images, scratch, cache, stack)
        run.notes = _notes(args, storage, cache, scratch, daemons, load_start)
    run.seconds = time.monotonic() - started
    meta.update(
        storage={"description": storage.describe(), **storage.facts},
        daemons=daemons,
        duration_s=round(run.seconds, 1),
        host=_host(load_start, os.getloadavg()),
        notes=run.notes,
    )
    run.targets = report.targets(run.results, run.refs)
    run.title = _title(args, storage, run.seconds)
    report.write_json(run.path, report.document(meta, run.refs, run.results, run.targets))
    return run


def _measure(
    args: argparse.Namespace,
    run: ProfileRun,
    storage: profiles.Storage,
    images: imagesmod.Images,
    scratch: imagesmod.Scratch,
    cache: procs.PageCache,
    stack: ExitStack,
) -> dict[str, dict[str, Any]]:
    """References and cases of one profile into run; each daemon's label
    and effective settings."""
    work = storage.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    # The proxy rows run apart (bench.proxybench); ids of theirs select none here.
    ids = case_ids() + clientbench.case_ids()
    selected = set(ids) & set(select(ids + proxybench.case_ids(), args.cases))
    daemons = _start_daemons(args, storage.root, stack, libnbd=NBDWIRE_CASE in selected)
    nbd_url = None
    if shutil.which("qemu-nbd"):
        nbd = QemuNbd(images.qcow2, work / "nbd.sock")
        stack.callback(nbd.close)
        nbd_url = nbd.url
    ctx = Context(
        images=images,
        scratch=scratch,
        client=ImageioClient(REF_VENV / "bin" / "python"),
        workdir=work,
        random_count=args.random_reads,
        random_seconds=args.random_seconds,
        latency_count=args.latency_count,
        nbd_url=nbd_url,
    )
    pki = daemons[0].dir / "pki"
    run.refs = physical_refs(args, images, pki, work, cache, scratch.upload_source)
    files = [images.full, images.sparse, images.qcow2]
    for case in (c for c in all_cases(ctx) if c.id in selected):
        result = measure(case, daemons, case.runs or args.runs, cache, files)
        log.info("DONE profile=%s case=%s seconds=%.1f", run.name, case.id, result.seconds)
        run.results.append(result)
    # Client against client, both on our daemon.
    for client_case in (c for c in clientbench.all_cases(ctx) if c.id in selected):
        result = clientbench.measure_clients(client_case, daemons[0], args.runs, cache)
        log.info("DONE profile=%s case=%s seconds=%.1f", run.name, client_case.id, result.seconds)
        run.results.append(result)
    return {d.name: {"label": d.label, "settings": d.settings()} for d in daemons}


def _title(args: argparse.Namespace, storage: profiles.Storage, seconds: float) -> str:
    tuned = (
        f"TUNED: buffer {args.buffer_size // 1024} KiB in every daemon"
        if args.buffer_size
        else "shipped defaults"
    )
    return (
        f"vdsm-imageio vs ovirt-imageio 2.5.1 -- {storage.describe()}; image "
        f"{imagesmod.size_tag(args.size)}, {args.runs} runs, {os.cpu_count()} CPUs, "
        f"{tuned}, {seconds:.0f} s"
    )


def _start_daemons(
    args: argparse.Namespace, url_root: Path, stack: ExitStack, *, libnbd: bool
) -> list[Daemon]:
    base = args.dir / "daemons"
    program = REPO / ".venv" / "bin" / "vdsm-imageio"
    # An installed package carries its byte code (pip compiled ovirt-imageio's
    # when it installed it); the checkout's modules are compiled once here,
    # or every start would compile them from source (PYTHONDONTWRITEBYTECODE).
    for package in ("vdsm_imageio", "verbs", "storage"):
        compileall.compile_dir(REPO / package, quiet=1)
    ours = Ours(base / "ours", buffer_size=args.buffer_size, program=program, url_root=url_root)
    ours.start()
    stack.callback(ours.stop)
    theirs = Theirs(
        base / "theirs",
        buffer_size=args.buffer_size,
        program=REF_VENV / "bin" / "ovirt-imageio",
        pki=ours.dir / "pki",
    )
    theirs.start()
    stack.callback(theirs.stop)
    daemons: list[Daemon] = [ours, theirs]
    if args.before is not None:
        before = Ours(
            base / BEFORE,
            buffer_size=args.buffer_size,
            program=program,
            url_root=url_root,
            checkout=args.before,
        )
        before.start()
        stack.callback(before.stop)
        daemons.append(before)
    if libnbd:
        plain = Ours(
            base / "ours-libnbd",
            buffer_size=args.buffer_size,
            program=program,
            url_root=url_root,
            nbd_splice=False,
        )
        plain.start()
        stack.callback(plain.stop)
        daemons.append(plain)
    return daemons


def physical_refs(
    args: argparse.Namespace,
    images: imagesmod.Images,
    pki: Path,
    work: Path,
    cache: procs.PageCache,
    upload_source: Path,
) -> dict[str, float]:
    def median_of(fn: Callable[[], float], drop: bool = False) -> float:
        values = []
        for _ in range(args.runs):
            if drop:
                cache.drop([images.full])
            values.append(fn())
        return float(statistics.median(values))

    log.info("PHYSICAL references")
    size, buf = args.size, args.buffer_size or REF_BUFFER
    return {
        "python unix socket loopback": median_of(lambda: physical.loopback("unix", size, buf, pki)),
        "python TLS loopback": median_of(lambda: physical.loopback("tls", size, buf, pki)),
        "dd O_DIRECT read": median_of(lambda: physical.dd_read(images.full, buf), drop=True),
        "dd O_DIRECT write (fsync)": median_of(
            lambda: physical.dd_write(work / "dd.raw", size, min(buf, size))
        ),
        "curl upload to a discarding unix server": median_of(
            lambda: physical.curl_upload_sink(upload_source, buf), drop=True
        ),
    }


def _code() -> dict[str, Any]:
    """The commit measured, so a later comparison knows what changed."""

    def git(*argv: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status)}


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "size": args.size,
        "runs": args.runs,
        "tuned_buffer_size": args.buffer_size,
        "reference_buffer_size": args.buffer_size or REF_BUFFER,
        "random_reads": args.random_reads,
        "random_seconds": args.random_seconds,
        "latency_count": args.latency_count,
        "cases": args.cases,
    }


def _host(
    load_start: tuple[float, float, float], load_end: tuple[float, float, float]
) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in load_end],
    }


def _notes(
    args: argparse.Namespace,
    storage: profiles.Storage,
    cache: procs.PageCache,
    scratch: imagesmod.Scratch,
    settings: dict[str, dict[str, Any]],
    load_start: tuple[float, float, float],
) -> list[str]:
    if args.buffer_size:
        buffers = (
            f"TUNED: buffer size {args.buffer_size // 1024} KiB in every daemon "
            "(users run the shipped defaults)"
        )
    else:
        buffers = "each daemon with its shipped defaults: " + "; ".join(
            f"{name} {', '.join(f'{k}={v}' for k, v in s['settings'].items())}"
            for name, s in settings.items()
        )
    return [
        storage.describe(),
        cache.describe(),
        scratch.describe(),
        buffers,
        "TLS with the same certificates; all on loopback; A B A B order, median of "
        f"{args.runs} runs",
        "CPU s/GiB: daemon utime+stime during the run per GiB of image "
        "(sparse download: per GiB of image size, not of data sent)",
        "client-* rows: our client against ovirt-imageio's, both on our daemon, "
        "whole process timed; their CPU s/GiB is the client's (and its qemu-nbd)",
        f"1-minute load average {load_start[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end ({os.cpu_count()} CPUs): "
        "other work on the machine shifts absolute numbers; ratios hold better",
    ]
