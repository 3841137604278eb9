"""Proxy mode: our proxy and host daemon against ovirt-imageio 2.5.1's, across a real link.

The rig (``bench.twohosts``): two network namespaces joined by a veth
pair. On the host's machine (10.213.7.2) our daemon and ovirt-imageio's
serve the images; on the proxy's machine (10.213.7.1) our proxy
(``serve --local DIR --proxy``: TLS 54323, ticket API on 127.0.0.1:54324)
and ovirt-imageio's daemon configured as the engine configures its proxy
(``[remote] port = 54423``, ``[control] transport = tcp``, ``[local]
enable = false``, ``[backend_http] ca_file``), each relaying to the host
daemon of its kind over TLS on the link. Tickets reach each proxy over its
ticket API on TCP, as the engine adds them; each host daemon gets its
own over its control socket, as vdsm adds them.

The clients run on the proxy's machine, as clients that cannot reach the
hosts do: curl, and ovirt-imageio's client with 4 workers over TLS,
through each proxy's URL (sides ``ours`` and ``theirs``), and straight to
our host daemon over the same link (side ``direct``: the transfer the
proxy must stay close to). The sides alternate within each run; rates
are medians. CPU s/GiB is the proxy's (the host daemon's for ``direct``).
The memory row runs 64 downloads at once through each proxy (64 tickets,
one connection each) and reads the proxy's peak RSS (VmHWM).

Targets: ours/theirs >= 1.3 and ours/direct >= 0.8 on every transfer row;
the proxy's peak RSS with 64 clients within its buffer pool plus 2 MiB a
connection over its idle RSS.

    python -m bench.proxybench [--size 1G] [--runs 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import images as imagesmod
from . import procs, profiles, twohosts
from .daemons import UnixHTTPConnection

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
OURS = REPO / ".venv" / "bin" / "vdsm-imageio"
REF_VENV = REPO / ".cache" / "ovirt-imageio-venv"
MiB = 1024**2
GiB = 1024**3
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
RUN_TIMEOUT = 1800.0
IO_TIMEOUT = 60.0
CLIENTS = 64
# Ports: the namespaces are the rig's own, so the conventional ones are free.
OUR_HOST, OUR_PROXY, OUR_TICKETS = 54322, 54323, 54324
THEIR_HOST, THEIR_PROXY, THEIR_TICKETS = 54422, 54423, 54424
SIDES = ("ours", "theirs", "direct")
CASES = ["proxy-download-curl", "proxy-upload-curl", "proxy-download-client", "proxy-upload-client"]
RSS_CASE = "proxy-rss-64"


def case_ids() -> list[str]:
    return [*CASES, RSS_CASE]


class BenchError(Exception):
    pass


class Proc:
    """A daemon on one of the machines; stopped by pid."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.log_path}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if ready():
                    return
            time.sleep(0.05)
        raise BenchError(f"{self.name} not ready in {START_TIMEOUT:g} s: {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Chain:
    """What a client talks to (a proxy, or the host directly) and how its
    tickets are added: on the host daemon, and on the proxy if there is one."""

    name: str
    url: str  # the transfer URL's prefix, .../images/
    measured: Proc  # the proxy (the host for direct): its CPU and memory
    host: Proc  # the host daemon: the chain's CPU is both
    add_host: Callable[[dict[str, Any]], None]
    add_proxy: Callable[[dict[str, Any]], None] | None
    host_url: str  # the host daemon's prefix, as the proxy reaches it

    def add(self, path: Path, size: int, ops: list[str]) -> str:
        ticket_id = str(uuid.uuid4())
        ticket = {
            "uuid": ticket_id,
            "size": size,
            "ops": ops,
            "timeout": 3600,
            "url": path.as_uri(),
            "transfer_id": f"bench-{self.name}-{ticket_id[:8]}",
            "sparse": True,
        }
        self.add_host(ticket)
        if self.add_proxy is not None:
            self.add_proxy({**ticket, "url": self.host_url + ticket_id})
        return ticket_id


@dataclass
class Rig:
    proxy_ns: twohosts.Namespace
    host_ns: twohosts.Namespace
    ca: Path
    chains: dict[str, Chain] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def run(self, *argv: str | Path, timeout: float = RUN_TIMEOUT) -> str:
        """A command on the proxy's machine; its stdout."""
        done = subprocess.run(
            [*self.proxy_ns.prefix, *(str(a) for a in argv)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return done.stdout


def _rpc(path: Path) -> Callable[[dict[str, Any]], None]:
    """Ticket.add over our JSON-RPC control socket."""

    def add(ticket: dict[str, Any]) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(IO_TIMEOUT)
            sock.connect(str(path))
            msg = {"jsonrpc": "2.0", "id": 1, "method": "Ticket.add", "params": {"ticket": ticket}}
            sock.sendall(json.dumps(msg).encode() + b"\n")
            reply = json.loads(sock.makefile("rb").readline())
        if "error" in reply:
            raise BenchError(f"Ticket.add: {reply['error']}")

    return add


def _ticket_api(
    connect: Callable[[], http.client.HTTPConnection],
) -> Callable[[dict[str, Any]], None]:
    """PUT /tickets/<uuid>, ovirt-imageio's ticket API (both daemons serve it)."""

    def add(ticket: dict[str, Any]) -> None:
        conn = connect()
        try:
            conn.request("PUT", f"/tickets/{ticket['uuid']}", body=json.dumps(ticket).encode())
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise BenchError(f"PUT /tickets: {resp.status} {body[:200]!r}")

    return add


def _options_ready(
    ns: twohosts.Namespace, host: str, port: int, context: ssl.SSLContext
) -> Callable[[], bool]:
    def ready() -> bool:
        conn = ns.https(host, port, context, 2.0)
        try:
            conn.request("OPTIONS", "/images/*")
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        finally:
            conn.close()

    return ready


def _their_conf(directory: Path, pki: Path, extra: str) -> None:
    (directory / "conf.d").mkdir(parents=True, exist_ok=True)
    (directory / "run").mkdir(exist_ok=True)
    (directory / "conf.d" / "50-bench.conf").write_text(f"""\
[daemon]
run_dir = {directory / "run"}
drop_privileges = false
systemd_enable = false

[tls]
enable = true
key_file = {pki / "server.key"}
cert_file = {pki / "server.pem"}
ca_file = {pki / "ca.pem"}

{extra}
[logger_root]
level = INFO

[handler_logfile]
args = ({str(directory / "daemon.log")!r},)
""")


def start_rig(rig: Rig, work: Path, storage: Path, logs: Path, stack: contextlib.ExitStack) -> None:
    """Four daemons: each kind's host daemon and its proxy; their output in logs."""
    host = twohosts.HOST_ADDRESS
    ours = work / "ours"
    (ours / "conf.d").mkdir(parents=True)
    # Every client of the rig comes from one address (the proxy's loopback,
    # and to the host the proxy's address): as the README advises for a
    # host behind a proxy, let as many connect at once as the memory row
    # opens. ovirt-imageio has no such limit.
    admission = f"[http]\nmax_unauthenticated_per_peer = {CLIENTS}\n"
    (ours / "conf.d" / "50-bench.conf").write_text(
        f"[tls]\nhost = {host}\n[storage]\nurl_roots = {storage}\n{admission}"
    )
    twohosts.write_pki(ours / "pki")
    context = ssl.create_default_context(cafile=str(rig.ca))
    (ours / "proxy" / "conf.d").mkdir(parents=True)
    (ours / "proxy" / "conf.d" / "50-bench.conf").write_text(
        f"[control]\nticket_port = {OUR_TICKETS}\n{admission}"
    )
    pki = ours / "pki"
    started = [
        (
            Proc(
                "our host",
                [
                    *rig.host_ns.prefix,
                    str(OURS),
                    "serve",
                    "--local",
                    str(ours),
                    "--port",
                    str(OUR_HOST),
                ],
                logs / "ours-host.log",
            ),
            _options_ready(rig.host_ns, host, OUR_HOST, context),
        ),
    ]
    theirs_host, theirs_proxy = work / "theirs-host", work / "theirs-proxy"
    _their_conf(
        theirs_host,
        pki,
        f"[remote]\nhost = {host}\nport = {THEIR_HOST}\n\n[local]\nenable = true\nsocket =\n\n"
        f"[control]\ntransport = unix\nsocket = {theirs_host / 'control.sock'}\n",
    )
    _their_conf(
        theirs_proxy,
        pki,
        f"[backend_http]\nca_file = {pki / 'ca.pem'}\n\n"
        f"[remote]\nhost = 127.0.0.1\nport = {THEIR_PROXY}\n\n[local]\nenable = false\n\n"
        f"[control]\ntransport = tcp\nport = {THEIR_TICKETS}\n",
    )
    program = str(REF_VENV / "bin" / "ovirt-imageio")
    started += [
        (
            Proc(
                "our proxy",
                [
                    *rig.proxy_ns.prefix,
                    str(OURS),
                    "serve",
                    "--local",
                    str(ours),
                    "--proxy",
                    "--port",
                    str(OUR_PROXY),
                ],
                logs / "ours-proxy.log",
            ),
            _options_ready(rig.proxy_ns, "127.0.0.1", OUR_PROXY, context),
        ),
        (
            Proc(
                "their host",
                [*rig.host_ns.prefix, program, "--conf-dir", str(theirs_host)],
                logs / "theirs-host.log",
            ),
            _options_ready(rig.host_ns, host, THEIR_HOST, context),
        ),
        (
            Proc(
                "their proxy",
                [*rig.proxy_ns.prefix, program, "--conf-dir", str(theirs_proxy)],
                logs / "theirs-proxy.log",
            ),
            _options_ready(rig.proxy_ns, "127.0.0.1", THEIR_PROXY, context),
        ),
    ]
    for proc, _ in started:
        stack.callback(proc.stop)
        rig.procs.append(proc)
    for proc, ready in started:
        proc.wait_ready(ready)
    our_host, our_proxy, their_host, their_proxy = rig.procs
    rig.chains = {
        "ours": Chain(
            "ours",
            f"https://127.0.0.1:{OUR_PROXY}/images/",
            our_proxy,
            our_host,
            _rpc(ours / "control.sock"),
            _ticket_api(lambda: rig.proxy_ns.http("127.0.0.1", OUR_TICKETS, IO_TIMEOUT)),
            f"https://{host}:{OUR_HOST}/images/",
        ),
        "theirs": Chain(
            "theirs",
            f"https://127.0.0.1:{THEIR_PROXY}/images/",
            their_proxy,
            their_host,
            _ticket_api(lambda: UnixHTTPConnection(str(theirs_host / "control.sock"))),
            _ticket_api(lambda: rig.proxy_ns.http("127.0.0.1", THEIR_TICKETS, IO_TIMEOUT)),
            f"https://{host}:{THEIR_HOST}/images/",
        ),
        "direct": Chain(
            "direct",
            f"https://{host}:{OUR_HOST}/images/",
            our_host,
            our_host,
            _rpc(ours / "control.sock"),
            None,
            f"https://{host}:{OUR_HOST}/images/",
        ),
    }


# Cases: each run moves the whole image once and returns its seconds.


@dataclass(frozen=True)
class Setup:
    rig: Rig
    image: Path
    size: int
    storage: Path
    scratch: imagesmod.Scratch


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


def run(args: argparse.Namespace, images: imagesmod.Images, stamp: str, wanted: list[str]) -> Path:
    """The proxy rows of a bench run; the path of their JSON."""
    if (why := twohosts.available()) is not None:
        raise BenchError(f"proxy rows need network namespaces: {why}")
    started, load_start = time.monotonic(), os.getloadavg()
    tag = imagesmod.size_tag(images.size)
    with contextlib.ExitStack() as stack:
        need = images.size * 3 + profiles.FS_MARGIN
        if profiles.room(need, args.shm) is None:
            storage = stack.enter_context(profiles.fast(-(-need // MiB) * MiB, base=args.shm))
        else:
            storage = stack.enter_context(profiles.disk(args.dir))
        image = storage.root / "proxy-full.raw"
        subprocess.run(["cp", "--sparse=always", str(images.full), str(image)], check=True)
        stack.callback(image.unlink, missing_ok=True)
        scratch = imagesmod.Scratch(images)
        stack.callback(scratch.close)
        work = storage.root / f"proxy-{os.getpid()}"
        work.mkdir()
        # Kept after the run, beside the images (the fast storage goes).
        logs = args.dir / "proxy-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        proxy_ns, host_ns = stack.enter_context(twohosts.two_machines())
        rig = Rig(proxy_ns, host_ns, work / "ours" / "pki" / "ca.pem")
        start_rig(rig, work, storage.root, logs, stack)
        setup = Setup(rig, image, images.size, storage.root, scratch)
        rows = measure(setup, [c for c in CASES if c in wanted], args.runs)
        mem = measure_memory(setup) if RSS_CASE in wanted else Memory()
        pool = pool_bytes(work / "ours")
        description = storage.describe()
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
