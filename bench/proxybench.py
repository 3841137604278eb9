"""Proxy mode in ``make bench``: our proxy and host daemon against ovirt-imageio 2.5.1's.

The rig is ``bench.proxyrig``: two machines joined by a veth link, each
kind's proxy on one and host daemon on the other. The clients run on the
proxy's machine, as clients that cannot reach the hosts do: curl, and
ovirt-imageio's client with 4 workers over TLS, through each proxy's URL
(sides ``ours`` and ``theirs``), and straight to our host daemon over the
same link (side ``direct``: the transfer the proxy must stay close to).
The sides alternate within each run; rates are medians. CPU s/GiB is the
proxy's (the host daemon's for ``direct``) and the chain's (proxy and host
daemon). The memory row runs 64 downloads at once through each proxy (64
tickets, one connection each) and reads the proxy's peak RSS (VmHWM).

Targets: ours/theirs >= 1.3 and ours/direct >= 0.8 on every transfer row;
the proxy's peak RSS with 64 clients within its buffer pool plus 2 MiB a
connection over its idle RSS.

    python -m bench.proxybench [--size 1G] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import images as imagesmod
from . import procs, profiles, twohosts
from .proxyrig import OURS, REF_VENV, REPO, RUN_TIMEOUT, BenchError, Chain, Rig, start_rig

log = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
MiB = 1024**2
GiB = 1024**3
CLIENTS = 64
SIDES = ("ours", "theirs", "direct")
CASES = ["proxy-download-curl", "proxy-upload-curl", "proxy-download-client", "proxy-upload-client"]
RSS_CASE = "proxy-rss-64"


def case_ids() -> list[str]:
    return [*CASES, RSS_CASE]


# Cases: each run moves the whole image once and returns its seconds.


@dataclass(frozen=True)
class Setup:
    rig: Rig
    image: Path
    size: int
    storage: Path
    scratch: imagesmod.Scratch
    work: Path


def curl(setup: Setup, *args: str | Path) -> None:
    setup.rig.run("curl", "--silent", "--show-error", "--fail", "--cacert", setup.rig.ca, *args)


def run_case(setup: Setup, case: str, chain: Chain) -> float:
    size, scratch = setup.size, setup.scratch
    download = "download" in case
    target = setup.storage / f"upload-{chain.name}.raw"
    if download:
        ticket_id = chain.add(setup.image, size, ["read"])
    else:
        target.unlink(missing_ok=True)
        with open(target, "wb") as f:
            f.truncate(size)
        ticket_id = chain.add(target, size, ["write"])
    url = chain.url + ticket_id
    started = time.monotonic()
    try:
        if case == "proxy-download-curl":
            curl(setup, "--output", "/dev/null", url)
        elif case == "proxy-upload-curl":
            curl(setup, "--upload-file", scratch.upload_source, "--header", "Expect:", url)
        else:
            op, src, dst = (
                ("download", url, scratch.path("dst.raw"))
                if download
                else ("upload", scratch.upload_source, url)
            )
            setup.rig.run(
                REF_VENV / "bin" / "python",
                HERE / "imageio_driver.py",
                op,
                src,
                dst,
                "--cafile",
                setup.rig.ca,
                "--tls",
                "--workers",
                "4",
            )
        return time.monotonic() - started
    finally:
        scratch.discard("dst.raw")
        target.unlink(missing_ok=True)


def peak_rss(setup: Setup, chain: Chain) -> tuple[float, float]:
    """Idle RSS and peak RSS (MiB) of the proxy while CLIENTS downloads run."""
    length = max(MiB, min(32 * MiB, setup.size // CLIENTS)) // 4096 * 4096
    tickets = [chain.add(setup.image, setup.size, ["read"]) for _ in range(CLIENTS)]
    pid = chain.measured.pid
    idle = procs.status_kib(pid, "VmRSS") / 1024
    if not procs.reset_peak_rss(pid):
        raise BenchError("cannot reset VmHWM (/proc/<pid>/clear_refs)")
    curls = []
    for i, ticket_id in enumerate(tickets):
        start = (i * length) % max(length, setup.size - length)
        curls.append(
            subprocess.Popen(
                [
                    *setup.rig.proxy_ns.prefix,
                    "curl",
                    "--silent",
                    "--show-error",
                    "--fail",
                    "--cacert",
                    str(setup.rig.ca),
                    "--output",
                    "/dev/null",
                    "--range",
                    f"{start}-{start + length - 1}",
                    chain.url + ticket_id,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    failed = [p for p in curls if p.wait(RUN_TIMEOUT) != 0]
    if failed:
        raise BenchError(f"{len(failed)} of {CLIENTS} downloads failed")
    return idle, procs.status_kib(pid, "VmHWM") / 1024


# The run.


@dataclass
class Row:
    case: str
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    # The proxy's and the host daemon's together: on a machine whose CPU is
    # the limit (and shared), the measure that load disturbs least.
    chain_cpu: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def median(self, side: str, what: str = "rate") -> float | None:
        values = {"rate": self.rates, "cpu": self.cpu, "chain": self.chain_cpu}[what].get(side)
        return statistics.median(values) if values else None

    def ratio(self, a: str, b: str, what: str = "rate") -> float | None:
        x, y = self.median(a, what), self.median(b, what)
        return x / y if x is not None and y else None


def measure(setup: Setup, cases: list[str], runs: int) -> list[Row]:
    rows = []
    for case in cases:
        row = Row(case)
        for n in range(runs):
            for side in SIDES:
                chain = setup.rig.chains[side]
                if side in row.failed:
                    continue
                pids = {chain.measured.pid, chain.host.pid}
                before = {pid: procs.cpu_seconds(pid) for pid in pids}
                try:
                    seconds = run_case(setup, case, chain)
                except (BenchError, subprocess.TimeoutExpired) as e:
                    log.warning("FAILED case=%s side=%s reason=%s", case, side, e)
                    row.failed[side] = str(e)
                    continue
                used = {pid: procs.cpu_seconds(pid) - before[pid] for pid in pids}
                per_gib = GiB / setup.size
                row.rates.setdefault(side, []).append(setup.size / MiB / seconds)
                row.cpu.setdefault(side, []).append(used[chain.measured.pid] * per_gib)
                row.chain_cpu.setdefault(side, []).append(sum(used.values()) * per_gib)
                log.info(
                    "RUN case=%s side=%s run=%d MiB/s=%.1f", case, side, n + 1, row.rates[side][-1]
                )
        rows.append(row)
    return rows


@dataclass
class Memory:
    idle: dict[str, float] = field(default_factory=dict)
    peak: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def measure_memory(setup: Setup) -> Memory:
    mem = Memory()
    for side in ("ours", "theirs"):
        try:
            mem.idle[side], mem.peak[side] = peak_rss(setup, setup.rig.chains[side])
        except BenchError as e:
            mem.failed[side] = str(e)
    return mem


def pool_bytes(directory: Path) -> int:
    out = subprocess.run(
        [str(OURS), "serve", "--local", str(directory), "--proxy", "--show-config"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(json.loads(out.stdout)["http"]["buffer_pool_bytes"])


def targets(rows: list[Row], mem: Memory, pool: int) -> list[dict[str, Any]]:
    found = []
    for row in rows:
        for name, got, want in (
            ("ours/theirs", row.ratio("ours", "theirs"), 1.3),
            ("ours/direct", row.ratio("ours", "direct"), 0.8),
        ):
            found.append(
                {
                    "name": f"{row.case} {name}",
                    "want": f">= {want}",
                    "got": got,
                    "met": None if got is None else got >= want,
                }
            )
    if "ours" in mem.peak:
        bound = mem.idle["ours"] + (pool + CLIENTS * 2 * MiB) / MiB
        got = mem.peak["ours"]
        found.append(
            {
                "name": f"{RSS_CASE} ours peak RSS MiB",
                "want": f"<= {bound:.0f} (idle + buffer pool + 2 MiB a connection)",
                "got": got,
                "met": got <= bound,
            }
        )
    return found


def table(rows: list[Row], mem: Memory) -> list[str]:
    def fmt(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [
        f"{'case (MiB/s)':<24}{'ours':>9}{'theirs':>9}{'direct':>9}"
        f"{'ours/theirs':>13}{'ours/direct':>13}"
        f"{'CPU s/GiB proxy':>18}{'proxy+host':>13}"
    ]
    for r in rows:
        cpu = f"{fmt(r.median('ours', 'cpu'), 2)}/{fmt(r.median('theirs', 'cpu'), 2)}"
        chain = f"{fmt(r.median('ours', 'chain'), 2)}/{fmt(r.median('theirs', 'chain'), 2)}"
        lines.append(
            f"{r.case:<24}{fmt(r.median('ours')):>9}{fmt(r.median('theirs')):>9}"
            f"{fmt(r.median('direct')):>9}{fmt(r.ratio('ours', 'theirs'), 2):>13}"
            f"{fmt(r.ratio('ours', 'direct'), 2):>13}{cpu:>18}{chain:>13}"
        )
        for side, why in r.failed.items():
            lines.append(f"  {side} failed: {why[:200]}")
    lines.append("  (CPU columns: ours/theirs)")
    for side in ("ours", "theirs"):
        if side in mem.peak:
            lines.append(
                f"{RSS_CASE} {side}: idle {mem.idle[side]:.0f} MiB, "
                f"peak with {CLIENTS} downloads {mem.peak[side]:.0f} MiB"
            )
        elif side in mem.failed:
            lines.append(f"{RSS_CASE} {side} failed: {mem.failed[side][:200]}")
    return lines


def open_setup(
    stack: contextlib.ExitStack, base: Path, shm: Path, images: imagesmod.Images
) -> tuple[Setup, str]:
    """The rig on its storage (fast if it fits, else the disk under base),
    undone by stack; and the storage's description."""
    need = images.size * 3 + profiles.FS_MARGIN
    if profiles.room(need, shm) is None:
        storage = stack.enter_context(profiles.fast(-(-need // MiB) * MiB, base=shm))
    else:
        storage = stack.enter_context(profiles.disk(base))
    image = storage.root / "proxy-full.raw"
    subprocess.run(["cp", "--sparse=always", str(images.full), str(image)], check=True)
    stack.callback(image.unlink, missing_ok=True)
    scratch = imagesmod.Scratch(images)
    stack.callback(scratch.close)
    work = storage.root / f"proxy-{os.getpid()}"
    work.mkdir()
    # Kept after the run, beside the images (the fast storage goes).
    logs = base / "proxy-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    proxy_ns, host_ns = stack.enter_context(twohosts.two_machines())
    rig = Rig(proxy_ns, host_ns, work / "ours" / "pki" / "ca.pem")
    start_rig(rig, work, storage.root, logs, stack, clients=CLIENTS)
    return Setup(rig, image, images.size, storage.root, scratch, work), storage.describe()


def run(args: argparse.Namespace, images: imagesmod.Images, stamp: str, wanted: list[str]) -> Path:
    """The proxy rows of a bench run; the path of their JSON."""
    if (why := twohosts.available()) is not None:
        raise BenchError(f"proxy rows need network namespaces: {why}")
    started, load_start = time.monotonic(), os.getloadavg()
    tag = imagesmod.size_tag(images.size)
    with contextlib.ExitStack() as stack:
        setup, description = open_setup(stack, args.dir, args.shm, images)
        rows = measure(setup, [c for c in CASES if c in wanted], args.runs)
        mem = measure_memory(setup) if RSS_CASE in wanted else Memory()
        pool = pool_bytes(setup.work / "ours")
    found = targets(rows, mem, pool)
    print(f"== proxy mode: ours->ours vs ovirt-imageio 2.5.1 proxy->daemon -- {description}")
    print(f"   image {tag}, {args.runs} runs, clients on the proxy's machine, TLS on a veth link")
    print(f"   1-minute load {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"   daemon logs: {args.dir / 'proxy-logs'}")
    print()
    print("\n".join(table(rows, mem)))
    print()
    print("targets (issue 13):")
    for t in found:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        got = "-" if t["got"] is None else f"{t['got']:.2f}"
        print(f"  {t['name']:<44} want {t['want']:<50} got {got:<8} {mark}")
    print()
    path: Path = args.results / f"bench-{stamp}-proxy-{tag}.json"
    doc = {
        "schema": 1,
        "stamp": stamp,
        "profile": "proxy",
        "config": {"size": images.size, "runs": args.runs, "clients": CLIENTS},
        "storage": description,
        "host": {"cpus": os.cpu_count(), "load_start": load_start, "load_end": os.getloadavg()},
        "duration_s": round(time.monotonic() - started, 1),
        "rows": [
            {
                "case": r.case,
                "rates": r.rates,
                "cpu_s_per_gib": r.cpu,
                "chain_cpu_s_per_gib": r.chain_cpu,
                "failed": r.failed,
                "ratio_ours_theirs": r.ratio("ours", "theirs"),
                "ratio_ours_direct": r.ratio("ours", "direct"),
            }
            for r in rows
        ],
        "memory": {"idle_mib": mem.idle, "peak_mib": mem.peak, "failed": mem.failed},
        "targets": found,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results (proxy): {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.proxybench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--size", type=imagesmod.parse_size, default=imagesmod.parse_size("1G"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cases", default="", help="comma-separated case ids (default: all)")
    p.add_argument("--dir", type=Path, default=REPO / ".cache" / "bench")
    p.add_argument("--shm", type=Path, default=profiles.SHM)
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()] or case_ids()
    unknown = set(wanted) - set(case_ids())
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}; known: {', '.join(case_ids())}")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s bench: %(message)s"
    )
    subprocess.run(
        ["sh", str(REPO / "tests/compat/setup-ovirt-imageio.sh"), str(REF_VENV)], check=True
    )
    images = imagesmod.ensure(args.dir, args.size)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run(args, images, stamp, wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
