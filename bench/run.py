"""``make bench``: vdsm-imageio against ovirt-imageio 2.5.1, same machine,
same run, same clients, on each storage profile (``bench.profiles``: the
virtual disk, and a RAM-backed ext4 where storage is not the bottleneck).
A table per profile on stdout, then every row on both profiles side by
side; one JSON per profile under bench/results/ (schema in
bench/README.md).

    python -m bench.run [--profiles disk,fast] [--size 2G] [--runs 3]
                        [--cases ID,...] [--before DIR] [--list]

Every option has an environment twin (BENCH_PROFILES, BENCH_SIZE,
BENCH_RUNS, BENCH_CASES, BENCH_DIR, BENCH_SHM, BENCH_RESULTS, BENCH_BUFFER_SIZE,
BENCH_RANDOM_READS, BENCH_RANDOM_SECONDS, BENCH_LATENCY_COUNT, BENCH_BEFORE) so the smoke
test can run the harness with tiny images. Progress goes to stderr.

The defaults fit ``make bench`` (both profiles) in 25 minutes on a
2-core machine: 2 GiB images, 3 runs of each case on each daemon.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from . import clientbench, profiles, proxybench, proxyrig, report, session
from . import images as imagesmod
from .cases import case_ids
from .session import REF_VENV, REPO, ProfileRun

log = logging.getLogger("bench")

BUDGET_SECONDS = 25 * 60


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--profiles",
        type=_profiles,
        default=_profiles(_env("BENCH_PROFILES", ",".join(profiles.PROFILES))),
        help="storage profiles to run, in order (default disk,fast)",
    )
    p.add_argument(
        "--size",
        type=imagesmod.parse_size,
        default=imagesmod.parse_size(_env("BENCH_SIZE", "2G")),
        help="image size (default 2G)",
    )
    p.add_argument(
        "--proxy-size",
        type=imagesmod.parse_size,
        default=imagesmod.parse_size(_env("BENCH_PROXY_SIZE", "1G")),
        help="image size of the proxy rows (default 1G: every byte crosses two "
        "daemons and a veth link, so they take twice a profile's time per GiB)",
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
        help="the disk profile's images and the daemons' directories (not tmpfs: O_DIRECT)",
    )
    p.add_argument(
        "--shm",
        type=Path,
        default=Path(_env("BENCH_SHM", str(profiles.SHM))),
        help="tmpfs for the fast profile's backing file (default /dev/shm)",
    )
    p.add_argument(
        "--results", type=Path, default=Path(_env("BENCH_RESULTS", str(REPO / "bench/results")))
    )
    p.add_argument(
        "--buffer-size",
        type=imagesmod.parse_size,
        default=(
            imagesmod.parse_size(os.environ["BENCH_BUFFER_SIZE"])
            if os.environ.get("BENCH_BUFFER_SIZE")
            else None
        ),
        help="TUNED run: this buffer size in both daemons (default: each daemon's own)",
    )
    p.add_argument("--random-reads", type=int, default=int(_env("BENCH_RANDOM_READS", "20000")))
    p.add_argument("--random-seconds", type=float, default=float(_env("BENCH_RANDOM_SECONDS", "3")))
    p.add_argument("--latency-count", type=int, default=int(_env("BENCH_LATENCY_COUNT", "200")))
    p.add_argument(
        "--before",
        type=Path,
        default=Path(os.environ["BENCH_BEFORE"]) if os.environ.get("BENCH_BEFORE") else None,
        help="a checkout of an earlier commit whose daemon takes its turn in every case",
    )
    p.add_argument("--list", action="store_true", help="list case ids and exit")
    return p.parse_args(argv)


def _profiles(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in profiles.PROFILES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"profiles are {', '.join(profiles.PROFILES)}; got {text!r}"
        )
    return names


def _stop_on_signal(signo: int, frame: FrameType | None) -> None:
    # Unwinds every ExitStack: daemons, qemu-nbd, the fast file system.
    raise SystemExit(128 + signo)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile_ids = case_ids() + clientbench.case_ids()
    if args.list:
        print("\n".join(profile_ids + proxybench.case_ids()))
        return 0
    wanted = session.select(profile_ids + proxybench.case_ids(), args.cases)
    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _stop_on_signal)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s bench: %(message)s",
        datefmt="%H:%M:%S",
    )
    started = time.monotonic()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    subprocess.run(
        ["sh", str(REPO / "tests/compat/setup-ovirt-imageio.sh"), str(REF_VENV)], check=True
    )
    log.info("IMAGES size=%d dir=%s", args.size, args.dir)
    images = imagesmod.ensure(args.dir, args.size)
    done: list[ProfileRun] = []
    if any(i in profile_ids for i in wanted):
        with ExitStack() as stack:
            scratch = imagesmod.Scratch(images)
            stack.callback(scratch.close)
            for name in args.profiles:
                run = session.run_profile(args, name, images, scratch, stamp)
                _print_profile(run)
                done.append(run)
    proxy_cases = [i for i in wanted if i in proxybench.case_ids()]
    if proxy_cases:
        # Proxy mode between two network namespaces (bench.proxybench).
        try:
            proxy_images = (
                images
                if args.proxy_size == args.size
                else imagesmod.ensure(args.dir, args.proxy_size)
            )
            proxybench.run(args, proxy_images, stamp, proxy_cases)
        except proxyrig.BenchError as e:
            print(f"proxy rows not run: {e}")
    _print_summary(done, time.monotonic() - started)
    return 0


def _print_profile(run: ProfileRun) -> None:
    print(f"== profile {run.name}: {run.title}")
    print()
    if run.skipped:
        print(f"profile {run.name} skipped: {run.skipped}")
    else:
        lines, footnotes = report.table(run.results)
        print("\n".join(lines))
        for note in footnotes:
            print(f"  * {note}")
        print()
        print(f"physical references ({run.name}, same run):")
        for name, value in run.refs.items():
            print(f"  {name:<40} {value:9.1f} MiB/s")
        print()
        verdict = report.nbdwire(run.results)
        if verdict:
            print(verdict.line())
            print()
        print("targets (issues 5 and 11):")
        print("\n".join(report.target_lines(run.targets)))
        print()
        for note in run.notes:
            print(f"note: {note}")
    print(f"elapsed ({run.name}): {run.seconds:.0f} s")
    print(f"results: {run.path}")
    print()


def _print_summary(done: list[ProfileRun], seconds: float) -> None:
    ran = [(r.name, r.results) for r in done if not r.skipped]
    if len(ran) > 1:
        print("== every row on both profiles (ratio: ours/theirs; CPU: CPU s/GiB ours/theirs)")
        print()
        print("\n".join(report.profiles_table(ran)))
        print()
    for r in done:
        verdict = report.nbdwire(r.results)
        if verdict:
            print(f"{r.name}: {verdict.line()}")
    per_profile = (
        ", ".join(f"{r.name} {r.seconds:.0f} s" + (" (skipped)" if r.skipped else "") for r in done)
        or "no storage profile"
    )
    print(
        f"elapsed: {per_profile}; whole run {seconds:.0f} s (budget {BUDGET_SECONDS} s"
        f"{', OVER' if seconds > BUDGET_SECONDS else ''})"
    )
    for r in done:
        print(f"results ({r.name}): {r.path}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Everything was torn down on the way out (ExitStacks, finally).
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
