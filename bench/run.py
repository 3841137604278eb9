"""``make bench``: vdsm-imageio against ovirt-imageio 2.5.1, same machine,
same run, same clients; one table on stdout, the same as JSON under
bench/results/.

    python -m bench.run [--size 4G] [--runs 3] [--cases ID,...] [--list]

Every option has an environment twin (BENCH_SIZE, BENCH_RUNS, BENCH_CASES,
BENCH_DIR, BENCH_RESULTS, BENCH_BUFFER_SIZE, BENCH_RANDOM_READS,
BENCH_RANDOM_SECONDS, BENCH_LATENCY_COUNT) so the smoke test can run the
harness with tiny images. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from . import images as imagesmod
from . import physical, procs, report
from .cases import Case, Context, all_cases, case_ids
from .clients import ImageioClient
from .daemons import Daemon, Ours, Theirs
from .harness import CaseResult, measure
from .nbdserver import QemuNbd

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
REF_VENV = REPO / ".cache" / "ovirt-imageio-venv"
MiB = 1024**2


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--size",
        type=imagesmod.parse_size,
        default=imagesmod.parse_size(_env("BENCH_SIZE", "4G")),
        help="image size (default 4G)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=int(_env("BENCH_RUNS", "3")),
        help="runs per case and daemon; the table shows medians",
    )
    p.add_argument(
        "--cases",
        default=_env("BENCH_CASES", ""),
        help="comma-separated case ids or id prefixes (default: all)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(_env("BENCH_DIR", str(REPO / ".cache/bench"))),
        help="images and daemon directories (not on tmpfs: O_DIRECT)",
    )
    p.add_argument(
        "--results", type=Path, default=Path(_env("BENCH_RESULTS", str(REPO / "bench/results")))
    )
    p.add_argument(
        "--buffer-size",
        type=imagesmod.parse_size,
        default=imagesmod.parse_size(_env("BENCH_BUFFER_SIZE", "8M")),
    )
    p.add_argument("--random-reads", type=int, default=int(_env("BENCH_RANDOM_READS", "20000")))
    p.add_argument(
        "--random-seconds", type=float, default=float(_env("BENCH_RANDOM_SECONDS", "10"))
    )
    p.add_argument("--latency-count", type=int, default=int(_env("BENCH_LATENCY_COUNT", "200")))
    p.add_argument("--list", action="store_true", help="list case ids and exit")
    return p.parse_args(argv)


def select(cases: list[Case], spec: str) -> list[Case]:
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    if not wanted:
        return cases
    unknown = [w for w in wanted if not any(c.id.startswith(w) for c in cases)]
    if unknown:
        raise SystemExit(f"unknown case ids: {', '.join(unknown)} (see --list)")
    return [c for c in cases if any(c.id.startswith(w) for w in wanted)]


def _stop_on_sigterm(signo: int, frame: FrameType | None) -> None:
    # Unwinds the ExitStack, so the daemons and qemu-nbd are stopped too.
    raise SystemExit(128 + signo)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print("\n".join(case_ids()))
        return 0
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s bench: %(message)s",
        datefmt="%H:%M:%S",
    )
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    subprocess.run(
        ["sh", str(REPO / "tests/compat/setup-ovirt-imageio.sh"), str(REF_VENV)], check=True
    )
    log.info("IMAGES size=%d dir=%s", args.size, args.dir)
    images = imagesmod.ensure(args.dir, args.size)
    cache = procs.PageCache()
    work = args.dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        ours = Ours(
            args.dir / "daemons" / "ours",
            buffer_size=args.buffer_size,
            program=REPO / ".venv" / "bin" / "vdsm-imageio",
            url_root=args.dir,
        )
        ours.start()
        stack.callback(ours.stop)
        theirs = Theirs(
            args.dir / "daemons" / "theirs",
            buffer_size=args.buffer_size,
            program=REF_VENV / "bin" / "ovirt-imageio",
            pki=ours.dir / "pki",
        )
        theirs.start()
        stack.callback(theirs.stop)
        scratch = imagesmod.Scratch(images)
        stack.callback(scratch.close)
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
        cases = select(all_cases(ctx), args.cases)
        daemons: list[Daemon] = [ours, theirs]
        refs = physical_refs(args, images, ours.dir / "pki", work, cache, scratch.upload_source)
        results: list[CaseResult] = []
        for case in cases:
            runs = case.runs or args.runs
            result = measure(case, daemons, runs, cache, [images.full, images.sparse, images.qcow2])
            log.info("DONE case=%s seconds=%.1f", case.id, result.seconds)
            results.append(result)
        notes = [
            cache.describe(),
            scratch.describe(),
            f"buffer size {args.buffer_size // MiB} MiB in both daemons; TLS with the "
            "same certificates; both on loopback; A B A B order, median of "
            f"{args.runs} runs",
            "CPU s/GiB: daemon utime+stime during the run per GiB of image "
            "(sparse download: per GiB of image size, not of data sent)",
            f"1-minute load average {load_before:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at end ({os.cpu_count()} CPUs): "
            "other work on the machine shifts absolute numbers; ratios hold better",
        ]
    meta = _meta(args, stamp, time.monotonic() - started, notes, ours, theirs)
    found = report.targets(results, refs)
    lines, footnotes = report.table(results)
    print(
        f"vdsm-imageio vs ovirt-imageio 2.5.1 -- image {imagesmod.size_tag(args.size)}, "
        f"{args.runs} runs, {meta['host']['cpus']} CPUs, {meta['duration_s']:.0f} s"
    )
    print()
    print("\n".join(lines))
    for note in footnotes:
        print(f"  * {note}")
    print()
    print("physical references (same run):")
    for name, value in refs.items():
        print(f"  {name:<40} {value:9.1f} MiB/s")
    print()
    print("targets (issue 5):")
    print("\n".join(report.target_lines(found)))
    print()
    for note in notes:
        print(f"note: {note}")
    out = args.results / f"bench-{stamp}-{imagesmod.size_tag(args.size)}.json"
    report.write_json(out, meta, refs, results, found)
    print(f"results: {out}")
    return 0


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
    size, buf = args.size, args.buffer_size
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


def _meta(
    args: argparse.Namespace,
    stamp: str,
    duration: float,
    notes: list[str],
    ours: Daemon,
    theirs: Daemon,
) -> dict[str, Any]:
    return {
        "stamp": stamp,
        "duration_s": round(duration, 1),
        "host": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "config": {
            "size": args.size,
            "runs": args.runs,
            "buffer_size": args.buffer_size,
            "random_reads": args.random_reads,
            "random_seconds": args.random_seconds,
            "latency_count": args.latency_count,
            "cases": args.cases,
        },
        "daemons": {"ours": ours.label, "theirs": theirs.label},
        "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(main())
