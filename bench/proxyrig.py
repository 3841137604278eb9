"""The proxy bench's rig: our proxy and host daemon, and ovirt-imageio 2.5.1's, on two machines.

Two network namespaces joined by a veth pair (``bench.twohosts``). On the
host's machine (10.213.7.2) our daemon and ovirt-imageio's serve the
images; on the proxy's machine (10.213.7.1) our proxy (``serve --local
DIR --proxy``: TLS 54323, ticket API on 127.0.0.1:54324) and
ovirt-imageio's daemon configured as the engine configures its proxy
(``[remote] port = 54423``, ``[control] transport = tcp``, ``[local]
enable = false``, ``[backend_http] ca_file``), each relaying to the host
daemon of its kind over TLS on the link. Tickets reach each proxy over its
ticket API on TCP, as the engine adds them; each host daemon gets its own
over its control socket, as vdsm adds them. Every daemon is stopped by
pid when the bench's ExitStack unwinds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdsm_imageio.client.http import UnixHTTPConnection

from . import twohosts

REPO = Path(__file__).resolve().parents[1]
OURS = REPO / ".venv" / "bin" / "vdsm-imageio"
REF_VENV = REPO / ".cache" / "ovirt-imageio-venv"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
RUN_TIMEOUT = 1800.0
IO_TIMEOUT = 60.0
# Ports: the namespaces are the rig's own, so the conventional ones are free.
OUR_HOST, OUR_PROXY, OUR_TICKETS = 54322, 54323, 54324
THEIR_HOST, THEIR_PROXY, THEIR_TICKETS = 54422, 54423, 54424


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


def start_rig(
    rig: Rig, work: Path, storage: Path, logs: Path, stack: contextlib.ExitStack, *, clients: int
) -> None:
    """Four daemons: each kind's host daemon and its proxy; their output in
    logs. clients is how many may connect at once from one address."""
    host = twohosts.HOST_ADDRESS
    ours = work / "ours"
    (ours / "conf.d").mkdir(parents=True)
    # Every client of the rig comes from one address (the proxy's loopback,
    # and to the host the proxy's address): as the README advises for a
    # host behind a proxy, let as many connect at once as the memory row
    # opens. ovirt-imageio has no such limit.
    admission = f"[http]\nmax_unauthenticated_per_peer = {clients}\n"
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
            _ticket_api(lambda: UnixHTTPConnection(str(theirs_host / "control.sock"), IO_TIMEOUT)),
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


BEFORE_PROXY, BEFORE_TICKETS = 54325, 54326


def add_before_proxy(rig: Rig, checkout: Path, work: Path, stack: contextlib.ExitStack) -> None:
    """A second proxy of ours, running the code of checkout (an earlier
    commit) from this virtual environment, beside ours on the proxy's
    machine and relaying to the same host daemon: chain ``before``."""
    # -P: without it the working directory (this checkout, when the bench
    # runs from it) comes before PYTHONPATH on sys.path and wins.
    python = (str(REPO / ".venv" / "bin" / "python"), "-P")
    env = ("env", f"PYTHONPATH={checkout}")
    where = subprocess.run(
        [*env, *python, "-c", "import vdsm_imageio; print(vdsm_imageio.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(checkout):
        raise BenchError(f"PYTHONPATH={checkout} imports vdsm_imageio from {where}")
    directory = work / "before"
    (directory / "proxy" / "conf.d").mkdir(parents=True)
    shutil.copytree(work / "ours" / "pki", directory / "pki")
    ours = rig.chains["ours"]
    (directory / "proxy" / "conf.d" / "50-bench.conf").write_text(
        (work / "ours" / "proxy" / "conf.d" / "50-bench.conf")
        .read_text()
        .replace(f"ticket_port = {OUR_TICKETS}", f"ticket_port = {BEFORE_TICKETS}")
    )
    argv = [
        *rig.proxy_ns.prefix,
        *env,
        *python,
        "-m",
        "vdsm_imageio.cli",
        "serve",
        "--local",
        str(directory),
        "--proxy",
        "--port",
        str(BEFORE_PROXY),
    ]
    proc = Proc("before proxy", argv, ours.measured.log_path.with_name("before-proxy.log"))
    stack.callback(proc.stop)
    rig.procs.append(proc)
    context = ssl.create_default_context(cafile=str(rig.ca))
    proc.wait_ready(_options_ready(rig.proxy_ns, "127.0.0.1", BEFORE_PROXY, context))
    rig.chains["before"] = Chain(
        "before",
        f"https://127.0.0.1:{BEFORE_PROXY}/images/",
        proc,
        ours.host,
        ours.add_host,
        _ticket_api(lambda: rig.proxy_ns.http("127.0.0.1", BEFORE_TICKETS, IO_TIMEOUT)),
        ours.host_url,
    )
