"""Two machines in one: network namespaces joined by a veth pair.

Used by the proxy's tests (tests/integration/test_proxy_netns.py) and its
benchmark (bench.proxybench): a proxy on one machine, the daemon that
holds the disks on the other, one real link between them.

The test creates two namespaces (``ip netns add``), joins them with a veth
pair whose ends get the two addresses of a /30 of their own (no other
traffic shares the link: nothing else lives in the namespaces), and deletes
both at the end, also when the test fails (deleting a namespace deletes its
end of the pair, and with it the pair). Programs run inside with
``ip netns exec NAME``, which execs the program (the pid is the program's,
and stopping it by pid stops it). The test's own sockets are made by a
thread that joined the namespace: setns(2) moves only the calling thread,
and a socket keeps the namespace it was made in.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import http.client
import itertools
import os
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vdsm_imageio import pki

CLONE_NEWNET = 0x40000000
CMD_TIMEOUT = 30.0
# A /30 no one else routes: each end is alone in its namespace, so every
# pair of namespaces may use it.
PROXY_ADDRESS = "10.213.7.1"
HOST_ADDRESS = "10.213.7.2"
PREFIX = 30
_serial = itertools.count()


def available() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "-V"], capture_output=True, check=False).returncode != 0:
        return "the ip command (iproute2) is missing"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=CMD_TIMEOUT)


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command inside: prefix + argv."""
        return ("ip", "netns", "exec", self.name)

    def new_socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket that lives in this namespace."""
        made: queue.SimpleQueue[socket.socket | BaseException] = queue.SimpleQueue()

        def make() -> None:
            try:
                with open(f"/run/netns/{self.name}") as ns:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                made.put(socket.socket(family, socket.SOCK_STREAM))
            except BaseException as e:
                made.put(e)

        thread = threading.Thread(target=make, name=f"netns-{self.name}")
        thread.start()
        thread.join(CMD_TIMEOUT)
        result = made.get(timeout=CMD_TIMEOUT)
        if isinstance(result, BaseException):
            raise result
        return result

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = self.new_socket()
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def https(
        self, host: str, port: int, context: ssl.SSLContext, timeout: float
    ) -> http.client.HTTPSConnection:
        return _NsHTTPSConnection(self, host, port, context, timeout)

    def http(self, host: str, port: int, timeout: float) -> http.client.HTTPConnection:
        return _NsHTTPConnection(self, host, port, timeout)


class _NsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, ns: Namespace, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ns = ns
        self._seconds = timeout

    def connect(self) -> None:
        self.sock = self._ns.connect(self.host, self.port, self._seconds)


class _NsHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, ns: Namespace, host: str, port: int, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._ns = ns
        self._tls = context
        self._seconds = timeout

    def connect(self) -> None:
        sock = self._ns.connect(self.host, self.port, self._seconds)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


@contextlib.contextmanager
def two_machines() -> Iterator[tuple[Namespace, Namespace]]:
    """The proxy's machine and the host's, one veth apart; both removed after."""
    tag = f"{os.getpid()}-{next(_serial)}"
    proxy = Namespace(f"vdsm-proxy-{tag}", PROXY_ADDRESS)
    host = Namespace(f"vdsm-host-{tag}", HOST_ADDRESS)
    made: list[Namespace] = []
    try:
        for ns in (proxy, host):
            ip("netns", "add", ns.name)
            made.append(ns)
            ip("-n", ns.name, "link", "set", "lo", "up")
        # Interface names are per namespace: these clash with nothing.
        ip(
            "-n", proxy.name, "link", "add", "veth-proxy", "type", "veth",
            "peer", "name", "veth-host", "netns", host.name,
        )  # fmt: skip
        for ns, dev in ((proxy, "veth-proxy"), (host, "veth-host")):
            ip("-n", ns.name, "addr", "add", f"{ns.address}/{PREFIX}", "dev", dev)
            ip("-n", ns.name, "link", "set", dev, "up")
        yield proxy, host
    finally:
        for ns in reversed(made):
            subprocess.run(
                ["ip", "netns", "del", ns.name],
                capture_output=True,
                timeout=CMD_TIMEOUT,
                check=False,
            )


def write_pki(directory: Path, host_address: str = HOST_ADDRESS) -> None:
    """directory/ca.pem and a server certificate of that CA (server.pem,
    server.key) valid for the host's address as well as for loopback: the
    ``--local`` profile's is for loopback only. Both daemons of a pair, and
    the proxy's CA file, use them."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = pki.new_key()
    ca = pki.create_ca_cert(ca_key, now=now)
    key = pki.new_key()
    cert = pki.issue_server_cert(ca, ca_key, key, now=now, names=(host_address, *pki.LOCAL_NAMES))
    directory.mkdir(parents=True, exist_ok=True)
    for name, data, mode in (
        ("ca.key", pki.key_pem(ca_key), 0o600),
        ("ca.pem", pki.cert_pem(ca), 0o644),
        ("server.key", pki.key_pem(key), 0o600),
        ("server.pem", pki.cert_pem(cert), 0o644),
    ):
        path = directory / name
        path.write_bytes(data)
        path.chmod(mode)
