"""Where our proxy spends its CPU while it relays (py-spy), per GiB moved.

    python -m bench.proxyprofile [--size 256M] [--runs 3] [--cases download-curl,...]
                                 [--before DIR]

The rig of ``bench.proxybench`` (proxy and host daemon on two machines
joined by a veth link, TLS on both hops). For each case, ``--runs``
transfers through our proxy and straight to our host daemon (``direct``)
alternate, without a profiler, and give the rates and CPU seconds per GiB
of the proxy and of the chain (proxy and host daemon); then one more
transfer runs under py-spy with native frames, whose busy samples are
sorted into what the proxy does with them: TLS record crypto, copies,
system calls, the Python interpreter, and the rest.

With ``--before DIR`` (a checkout of an earlier commit) a second proxy
runs that code from the same virtual environment, relaying to the same
host daemon, and takes its turn in every round: the ratios between the
two come from one run on one machine, the only ratios a shared machine
gives that mean much.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from . import images as imagesmod
from . import procs, profiles
from .profile import PY_SPY, record
from .proxybench import Setup, open_setup, run_case
from .proxyrig import REPO, add_before_proxy

log = logging.getLogger("bench")

GiB = 1024**3
MiB = 1024**2
CASES = ("download-curl", "upload-curl", "download-client", "upload-client")

# Native frames by what they do; the first match wins.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "TLS crypto",
        ("aes", "gcm", "ghash", "chacha", "poly1305", "sha", "evp_", "cipher", "gf_mul"),
    ),
    ("TLS records", ("ssl3_", "tls_", "ssl_", "bio_", "record_layer", "crypto_")),
    ("copies", ("memmove", "memcpy", "memset")),
    (
        "system calls",
        ("recv", "send", "read", "write", "poll", "select", "syscall", "epoll"),
    ),
    ("locks and threads", ("pthread", "sem_", "lock")),
    ("Python interpreter", ("_pyeval", "pyobject", "pyframe", "_py", "py", "(python")),
)
# Functions a thread sleeps in. py-spy without --idle still keeps some
# samples of sleeping threads when it stops the process to read native
# stacks, and the proxy has many of them (a lock wait in libc's futex code
# showed up as the largest "self frame"); they are not CPU.
WAITS = frozenset(
    (
        "epoll_wait",
        "poll",
        "select",
        "accept4",
        "clock_nanosleep",
        "take_gil",
        "PyThread_acquire_lock_timed",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "sem_wait",
        "sem_clockwait",
        "sem_timedwait",
    )
)
WAITING = "waiting (not CPU)"


def named(frame: str) -> str | None:
    """The function name of a frame, or None for an address the profiler
    could not name (a libc symbol that only debug info has)."""
    name = frame.partition(" (")[0]
    return None if name.startswith("0x") else name


def kind_of(stack: list[str]) -> str:
    """What the innermost named frame of a sampled stack does."""
    leaf = next((f for f in reversed(stack) if named(f) is not None), None)
    if leaf is None:
        return "other"
    if named(leaf) in WAITS:
        return WAITING
    name = leaf.lower()
    for kind, marks in KINDS:
        if any(m in name for m in marks):
            return kind
    return "other"


def busy_by_kind(raw: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Samples of the process by kind, and by innermost named frame (waits
    counted under WAITING only)."""
    kinds: dict[str, int] = collections.defaultdict(int)
    frames: dict[str, int] = collections.defaultdict(int)
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        parts = stack.split(";")
        if parts and parts[0].startswith("thread ("):
            parts.pop(0)
        if not parts:
            continue
        count = int(count_text)
        kind = kind_of(parts)
        kinds[kind] += count
        if kind != WAITING:
            leaf = next((f for f in reversed(parts) if named(f) is not None), parts[-1])
            frames[leaf] += count
    return kinds, frames


def measure(setup: Setup, case: str, sides: list[str], runs: int) -> dict[str, dict[str, float]]:
    """Median MiB/s and CPU s/GiB (proxy, its system part, chain) of each side."""
    got: dict[str, dict[str, list[float]]] = {s: collections.defaultdict(list) for s in sides}
    per_gib = GiB / setup.size
    for n in range(runs):
        for side in sides:
            chain = setup.rig.chains[side]
            pids = {chain.measured.pid, chain.host.pid}
            before = {pid: procs.cpu_seconds(pid) for pid in pids}
            sys0 = procs.cpu_split(chain.measured.pid)[1]
            seconds = run_case(setup, f"proxy-{case}", chain)
            used = {pid: procs.cpu_seconds(pid) - before[pid] for pid in pids}
            got[side]["rate"].append(setup.size / MiB / seconds)
            got[side]["cpu"].append(used[chain.measured.pid] * per_gib)
            got[side]["sys"].append((procs.cpu_split(chain.measured.pid)[1] - sys0) * per_gib)
            got[side]["chain"].append(sum(used.values()) * per_gib)
            rate = got[side]["rate"][-1]
            log.info("RUN case=%s side=%s run=%d MiB/s=%.1f", case, side, n + 1, rate)
    return {s: {k: statistics.median(v) for k, v in got[s].items()} for s in sides}


def profile(setup: Setup, case: str, side: str, out: Path) -> tuple[float, Path]:
    """One transfer through side's proxy under py-spy: its CPU s/GiB and the raw stacks."""
    chain = setup.rig.chains[side]
    raw = out / f"proxy-{side}-{case}.txt"
    spy = record(chain.measured.pid, raw, idle=False, native=True)
    time.sleep(1.0)
    cpu0 = procs.cpu_seconds(chain.measured.pid)
    run_case(setup, f"proxy-{case}", chain)
    cpu = procs.cpu_seconds(chain.measured.pid) - cpu0
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if not raw.exists():
        raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
    return cpu * GiB / setup.size, raw


def report(
    case: str,
    medians: dict[str, dict[str, float]],
    profiled: dict[str, tuple[float, Path]],
) -> None:
    print(f"== {case}: medians of the runs")
    print(f"  {'side':<8}{'MiB/s':>9}{'CPU s/GiB':>11}{'of it sys':>11}{'proxy+host':>12}")
    for side, m in medians.items():
        print(f"  {side:<8}{m['rate']:>9.1f}{m['cpu']:>11.2f}{m['sys']:>11.2f}{m['chain']:>12.2f}")
    for a, b in (("ours", "direct"), ("ours", "before"), ("before", "direct")):
        if a in medians and b in medians:
            ma, mb = medians[a], medians[b]
            print(
                f"  {a}/{b}: rate {ma['rate'] / mb['rate']:.2f}, "
                f"proxy CPU {ma['cpu'] / mb['cpu']:.2f}, chain CPU {ma['chain'] / mb['chain']:.2f}"
            )
    for side, (cpu, raw) in profiled.items():
        kinds, frames = busy_by_kind(raw)
        waiting = kinds.pop(WAITING, 0)
        busy = sum(kinds.values())
        if not busy:
            print(f"  {side} proxy under py-spy: no busy samples")
            continue
        # The samples give the shares; /proc gives the CPU seconds they share.
        print(
            f"  {side} proxy under py-spy: {cpu:.2f} CPU s/GiB; {busy} busy samples "
            f"({waiting} of sleeping threads left out); by kind:"
        )
        for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"    {cpu * n / busy:6.2f} s/GiB {100 * n / busy:5.1f}%  {kind}")
        print("   top innermost named frames:")
        for frame, n in sorted(frames.items(), key=lambda kv: -kv[1])[:12]:
            print(f"    {cpu * n / busy:6.2f} s/GiB {100 * n / busy:5.1f}%  {frame[:100]}")
    print()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.proxyprofile")
    p.add_argument("--size", type=imagesmod.parse_size, default=imagesmod.parse_size("256M"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cases", default="download-curl,upload-curl")
    p.add_argument("--before", type=Path, help="a checkout whose proxy runs beside ours")
    p.add_argument("--dir", type=Path, default=REPO / ".cache" / "bench")
    p.add_argument("--shm", type=Path, default=profiles.SHM)
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s bench: %(message)s"
    )
    if not PY_SPY.exists():
        sys.exit(f"{PY_SPY} not found: .venv/bin/pip install py-spy")
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(CASES):
        p.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    images = imagesmod.ensure(args.dir, args.size)
    out = args.dir / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        setup, description = open_setup(stack, args.dir, args.shm, images)
        sides = ["ours", "direct"]
        if args.before is not None:
            add_before_proxy(setup.rig, args.before.resolve(), setup.work, stack)
            sides.insert(1, "before")
        load = os.getloadavg()[0]
        print(f"== our proxy, {imagesmod.size_tag(args.size)} image, {description}")
        print(f"   {args.runs} runs a side, 1-minute load {load:.1f} at start")
        print()
        for case in cases:
            medians = measure(setup, case, sides, args.runs)
            profiled = {side: profile(setup, case, side, out) for side in sides if side != "direct"}
            report(case, medians, profiled)
        print(f"   1-minute load {os.getloadavg()[0]:.1f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
