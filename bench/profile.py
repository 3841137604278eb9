"""Where our daemon spends its time during one transfer (py-spy).

    python -m bench.profile [--size 4G] [--cases download-unix-curl,...] [--daemon theirs]

Starts vdsm-imageio alone (or ovirt-imageio, to compare), runs each transfer case once while py-spy
(``pip install py-spy`` into the project venv) samples the daemon, twice:
once counting only busy samples (where the CPU goes) and once with idle
ones too (where a connection's wall time goes: blocked in the disk read,
blocked in the socket send, or working). Prints the top functions by self
and inclusive share; the raw collapsed stacks are kept next to the images.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from . import images as imagesmod
from . import procs
from .cases import Context, Transfer
from .clients import ImageioClient
from .daemons import Daemon, Ours, Theirs
from .nbdserver import QemuNbd
from .session import REF_VENV, REPO

log = logging.getLogger("bench.profile")
PY_SPY = REPO / ".venv" / "bin" / "py-spy"
# Frames of the request handlers and their helper threads, in both daemons.
DATA_PATH = ("images.py", "pipeline.py", "zerocopy.py", "ops.py")
DEFAULT_CASES = "download-unix-curl,download-tls-curl,upload-unix-curl"


def summarize(raw: Path, top: int, markers: tuple[str, ...] = ()) -> list[str]:
    """Self and inclusive shares of functions in collapsed stacks; with
    markers, only stacks with a frame containing one (the data path)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        # With --threads the first frame is "thread (TID): NAME".
        if frames[0].startswith("thread ("):
            frames.pop(0)
        if not frames or (markers and not any(m in f for f in frames for m in markers)):
            continue
        n = int(count_text)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; self:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [
        f"    {100 * n / total:5.1f}%  {f}"
        for f, n in incl.most_common(top)
        if not f.startswith("<module>") and "thread" not in f.split(" ")[0].lower()
    ]
    return lines


def record(pid: int, out: Path, *, idle: bool, native: bool) -> subprocess.Popen[bytes]:
    cmd = [
        str(PY_SPY),
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        "--format",
        "raw",
        "--nolineno",
        "--threads",
        "--output",
        str(out),
    ]
    if idle:
        cmd.append("--idle")
    if native:
        cmd.append("--native")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument(
        "--size",
        type=imagesmod.parse_size,
        default=imagesmod.parse_size(os.environ.get("BENCH_SIZE", "4G")),
    )
    p.add_argument("--cases", default=DEFAULT_CASES)
    p.add_argument("--dir", type=Path, default=REPO / ".cache" / "bench")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--native", action="store_true", help="include C frames (OpenSSL, libc)")
    p.add_argument(
        "--daemon",
        choices=["ours", "theirs"],
        default="ours",
        help="theirs: profile ovirt-imageio 2.5.1 the same way, for comparison",
    )
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s bench: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not PY_SPY.exists():
        sys.exit(f"{PY_SPY} not found: .venv/bin/pip install py-spy")
    images = imagesmod.ensure(args.dir, args.size)
    out_dir = args.dir / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        daemon = _start(args.daemon, args.dir)
        stack.callback(daemon.stop)
        scratch = imagesmod.Scratch(images)
        stack.callback(scratch.close)
        ctx = Context(
            images=images,
            scratch=scratch,
            client=ImageioClient(REF_VENV / "bin" / "python"),
            workdir=args.dir / "work",
            random_count=0,
            random_seconds=0,
            latency_count=0,
        )
        for case_id in args.cases.split(","):
            source = "nbd" if case_id.startswith("nbd-") else "file"
            direction, transport, tool = case_id.removeprefix("nbd-").split("-")
            if source == "nbd" and ctx.nbd_url is None:
                ctx.workdir.mkdir(parents=True, exist_ok=True)
                nbd = QemuNbd(images.qcow2, ctx.workdir / "nbd.sock")
                stack.callback(nbd.close)
                ctx.nbd_url = nbd.url
            case = Transfer(ctx, direction=direction, transport=transport, tool=tool, source=source)
            for idle in (False, True):
                raw = out_dir / f"{args.daemon}-{case_id}-{'wall' if idle else 'cpu'}.txt"
                rate, cpu = _profile_once(case, daemon, raw, idle=idle, native=args.native)
                print(
                    f"== {args.daemon} {case_id} ({'wall' if idle else 'cpu'}): "
                    f"{rate:.0f} MiB/s, daemon CPU {cpu:.2f} s; {raw}"
                )
                print("\n".join(summarize(raw, args.top, DATA_PATH if idle else ())))
                print()
    return 0


def _start(which: str, base: Path) -> Daemon:
    ours = Ours(
        base / "daemons" / "ours",
        buffer_size=None,
        program=REPO / ".venv" / "bin" / "vdsm-imageio",
        url_root=base,
    )
    daemon: Daemon = ours
    if which == "theirs":
        # Ours made the certificates on its first start (make bench).
        daemon = Theirs(
            base / "daemons" / "theirs",
            buffer_size=None,
            program=REF_VENV / "bin" / "ovirt-imageio",
            pki=ours.dir / "pki",
        )
    daemon.start()
    return daemon


def _profile_once(
    case: Transfer, daemon: Daemon, raw: Path, *, idle: bool, native: bool
) -> tuple[float, float]:
    """One run of case under py-spy: (MiB/s, daemon CPU seconds)."""
    images = case.ctx.images
    tickets = case.prepare(daemon)
    try:
        procs.PageCache().drop([images.full, images.qcow2])
        spy = record(daemon.pid, raw, idle=idle, native=native and not idle)
        time.sleep(1.0)
        cpu0 = procs.cpu_seconds(daemon.pid)
        result = case.run(daemon, tickets)
        cpu = procs.cpu_seconds(daemon.pid) - cpu0
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=30)
        if not raw.exists():
            raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")
    finally:
        case.cleanup(daemon, tickets)
    return next(iter(result.values())), cpu


if __name__ == "__main__":
    sys.exit(main())
