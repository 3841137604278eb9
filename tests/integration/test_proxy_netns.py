"""Proxy mode between two machines: a proxy and a host daemon in two network
namespaces joined by a veth pair, so the hop is TLS over a real link.

The host daemon binds its own address (10.213.7.2) with a certificate for
it, issued by the CA the proxy trusts; the proxy serves on its loopback.
The clients run on the proxy's machine, as a client that cannot reach the
hosts: curl, our client and ovirt-imageio 2.5.1's client, each through the
proxy's URL. The test's own requests use sockets made in the proxy's
namespace (bench/twohosts.py). Everything runs as root; without root the module is
skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import twohosts as netns
from storage.qemu_nbd import QemuNbd
from tests.integration.clientrun import CLIENT
from tests.integration.proxypair import Pair, add_pair, host_links, stop
from tests.integration.proxyrig import pattern, request
from tests.support.daemon import Daemon, ini, new_directory

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2
IO_TIMEOUT = 60.0
RUN_TIMEOUT = 300.0
WAIT = 10.0
COMPAT = REPO / "tests" / "compat"
CLIENT_PYTHON = REPO / ".cache" / "ovirt-imageio-venv" / "bin" / "python"

pytestmark = pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))


@dataclass
class Rig:
    proxy_ns: netns.Namespace
    host_ns: netns.Namespace
    host: Daemon
    proxy: Daemon
    context: ssl.SSLContext

    def proxy_https(self, timeout: float = IO_TIMEOUT) -> http.client.HTTPSConnection:
        return self.proxy_ns.https("127.0.0.1", self.proxy.port, self.context, timeout)

    def host_https(self, timeout: float = IO_TIMEOUT) -> http.client.HTTPSConnection:
        """The host as a machine that can reach it sees it (its own)."""
        return self.host_ns.https(netns.HOST_ADDRESS, self.host.port, self.context, timeout)

    def add(self, **kw: Any) -> Pair:
        return add_pair(self.host, self.proxy, host_address=netns.HOST_ADDRESS, **kw)

    def url(self, pair: Pair) -> str:
        return f"https://127.0.0.1:{self.proxy.port}{pair.target}"

    def run(
        self, *argv: str | Path, timeout: float = RUN_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """A command on the proxy's machine."""
        return subprocess.run(
            [*self.proxy_ns.prefix, *(str(a) for a in argv)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start_host(self, *, port: int = 0) -> Daemon:
        return Daemon(
            self.host.dir,
            ini({"tls": {"host": netns.HOST_ADDRESS}}),
            prefix=self.host_ns.prefix,
            port=port,
        )


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with contextlib.ExitStack() as stack:
        proxy_ns, host_ns = stack.enter_context(netns.two_machines())
        directory = new_directory()
        stack.callback(shutil.rmtree, directory, ignore_errors=True)
        netns.write_pki(directory / "pki")
        host = Daemon(directory, ini({"tls": {"host": netns.HOST_ADDRESS}}), prefix=host_ns.prefix)
        holder: list[Rig] = []
        # The host of the end: a test may have restarted it.
        stack.callback(lambda: _stop_unless_killed(holder[0].host if holder else host))
        proxy = Daemon(
            directory, ini({"control": {"ticket_port": 0}}), proxy=True, prefix=proxy_ns.prefix
        )
        stack.callback(stop, proxy)
        context = ssl.create_default_context(cafile=str(proxy.ca))
        holder.append(Rig(proxy_ns, host_ns, host, proxy, context))
        yield holder[0]


def _stop_unless_killed(daemon: Daemon) -> None:
    if not daemon.killed:
        stop(daemon)


def sparse_file(path: Path, size: int, runs: list[tuple[int, int]], seed: int) -> None:
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in runs:
            f.seek(offset)
            f.write(rnd.randbytes(length))


def test_proxy_reaches_the_host_over_tls_on_the_link(rig: Rig) -> None:
    pair = rig.add(size=4 * MiB, data=pattern(4 * MiB))
    conn = rig.proxy_https()
    resp, options = request(conn, "OPTIONS", pair.target)
    assert resp.status == 200
    # The host advertised its unix socket; it is on another machine.
    assert json.loads(options)["unix_socket"] == rig.proxy.unix_socket
    resp, body = request(conn, "GET", pair.target)
    assert resp.status == 200 and body == pattern(4 * MiB)
    assert host_links(rig.proxy, rig.host, inside=rig.proxy_ns.prefix) == {"tls": 1, "unix": 0}
    assert f"HOST using unix socket host={netns.HOST_ADDRESS}" not in rig.proxy.log()


def test_curl_uploads_and_downloads_through_the_proxy(rig: Rig, tmp_path: Path) -> None:
    size = 48 * MiB + 3
    pair = rig.add(size=size, ops=("write",))
    source = tmp_path / "source.raw"
    source.write_bytes(pattern(size, seed=1))
    curl = ("curl", "--fail-with-body", "-sS", "--cacert", str(rig.proxy.ca))
    done = rig.run(*curl, "-T", source, rig.url(pair))
    assert done.returncode == 0, done.stderr + done.stdout
    assert pair.path.read_bytes() == source.read_bytes()
    back = tmp_path / "back.raw"
    done = rig.run(*curl, "-o", back, rig.url(pair))
    assert done.returncode == 0, done.stderr + done.stdout
    assert back.read_bytes() == source.read_bytes()


def test_random_io_zero_and_flush_reach_the_host_disk(rig: Rig) -> None:
    size = 6 * MiB
    pair = rig.add(size=size)
    model = bytearray(size)
    conn = rig.proxy_https()
    for i, (offset, length) in enumerate([(1, 4096), (MiB - 3, MiB + 9), (size - 100, 100)]):
        chunk = pattern(length, seed=i)
        headers = {"Content-Range": f"bytes {offset}-{offset + length - 1}/*"}
        resp, _ = request(conn, "PUT", f"{pair.target}?flush=n", chunk, headers)
        assert resp.status == 200
        model[offset : offset + length] = chunk
    zero = {"op": "zero", "offset": MiB, "size": 4096, "flush": True}
    resp, _ = request(conn, "PATCH", pair.target, json.dumps(zero).encode())
    assert resp.status == 200
    model[MiB : MiB + 4096] = bytes(4096)
    resp, _ = request(conn, "PATCH", pair.target, json.dumps({"op": "flush"}).encode())
    assert resp.status == 200
    assert pair.path.read_bytes() == model
    resp, body = request(conn, "GET", pair.target, headers={"Range": f"bytes={MiB - 5}-"})
    assert resp.status == 206 and body == model[MiB - 5 :]


def test_checksum_through_the_proxy_equals_the_hosts(rig: Rig) -> None:
    size = 32 * MiB
    pair = rig.add(size=size, data=pattern(9 * MiB, seed=4))
    target = f"{pair.target}/checksum"
    resp, through_proxy = request(rig.proxy_https(), "GET", target)
    assert resp.status == 200, through_proxy
    resp, on_host = request(rig.host_https(), "GET", target)
    assert json.loads(through_proxy) == json.loads(on_host)


def test_our_client_through_the_proxy(rig: Rig, tmp_path: Path) -> None:
    size = 40 * MiB
    source = tmp_path / "source.raw"
    sparse_file(source, size, [(0, MiB), (10 * MiB + 7, 3 * MiB), (size - MiB, MiB)], seed=2)
    pair = rig.add(size=size, ops=("write",))
    ca = ("--cafile", str(rig.proxy.ca))
    done = rig.run(CLIENT, "upload", source, rig.url(pair), *ca)
    assert done.returncode == 0, done.stderr
    assert pair.path.read_bytes() == source.read_bytes()
    back = tmp_path / "back.raw"
    done = rig.run(CLIENT, "download", rig.url(pair), back, *ca)
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == source.read_bytes()
    done = rig.run(CLIENT, "checksum", rig.url(pair), *ca)
    assert done.returncode == 0, done.stderr


def test_host_restarted_mid_transfer_fails_clearly_and_a_retry_works(rig: Rig) -> None:
    size = 96 * MiB
    data = pattern(size, seed=8)
    pair = rig.add(size=size, data=data)
    conn = rig.proxy_https(timeout=WAIT)
    conn.request("GET", pair.target)
    resp = conn.getresponse()
    assert resp.status == 200
    got = len(resp.read(MiB))
    port = rig.host.port
    rig.host.kill()
    start = time.monotonic()
    with contextlib.suppress(http.client.IncompleteRead, ConnectionError):
        while chunk := resp.read(MiB):
            got += len(chunk)
    assert time.monotonic() - start < WAIT, "the client waited for a host that is gone"
    assert got < size
    resp, body = request(rig.proxy_https(), "GET", pair.target)
    assert resp.status == 502
    assert body.decode().startswith(f"Cannot reach the host daemon at {netns.HOST_ADDRESS}:{port}")
    rig.host = rig.start_host(port=port)
    ticket = {
        "uuid": pair.ticket_id,
        "size": size,
        "ops": ["read", "write"],
        "timeout": 300,
        "url": pair.path.as_uri(),
        "transfer_id": "after-restart",
    }
    rig.host.result("Ticket.add", ticket=ticket)
    resp, body = request(rig.proxy_https(), "GET", pair.target)
    assert resp.status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


# ovirt-imageio 2.5.1's client, through the proxy's URL.


@pytest.fixture(scope="module")
def client_python() -> Path:
    setup = COMPAT / "setup-ovirt-imageio.sh"
    result = subprocess.run([str(setup)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.fail(f"{setup.name} failed:\n{result.stdout}{result.stderr}")
    return CLIENT_PYTHON


def ovirt_client(rig: Rig, python: Path, *args: str | Path) -> dict[str, Any]:
    """driver.py on the proxy's machine, as a client on another host than
    the proxy (TLS to it, not its unix socket)."""
    done = rig.run(python, COMPAT / "driver.py", *args, "--cafile", rig.proxy.ca, "--no-unix")
    if done.returncode != 0:
        pytest.fail(
            f"ovirt-imageio client failed:\n{done.stderr[-6000:]}\n"
            f"--- proxy log ---\n{rig.proxy.log()[-6000:]}"
        )
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def qemu_img(*args: str | Path) -> str:
    done = subprocess.run(
        ["qemu-img", *(str(a) for a in args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.compat
def test_ovirt_imageio_client_raw_and_sparse_through_the_proxy(
    rig: Rig, client_python: Path, tmp_path: Path
) -> None:
    size = 64 * MiB
    runs = [(0, 4096), (MiB + 512, 3 * MiB), (40 * MiB, 5 * MiB + 1), (size - 8192, 8192)]
    source = tmp_path / "source.raw"
    sparse_file(source, size, runs, seed=9)
    pair = rig.add(size=size, ops=("write",))
    report = ovirt_client(rig, client_python, "upload", source, rig.url(pair))
    assert report["options"]["max_writers"] >= 1
    qemu_img("compare", "-f", "raw", "-F", "raw", source, pair.path)
    back = tmp_path / "back.raw"
    ovirt_client(rig, client_python, "download", rig.url(pair), back)
    qemu_img("compare", "-f", "raw", "-F", "raw", source, back)
    # The client skipped the holes the extents showed: the copy is sparse.
    assert back.stat().st_blocks * 512 < size // 2


@pytest.mark.compat
def test_ovirt_imageio_client_qcow2_guest_data_through_the_proxy(
    rig: Rig, client_python: Path, tmp_path: Path
) -> None:
    size = 64 * MiB
    raw = tmp_path / "guest.raw"
    sparse_file(raw, size, [(0, MiB), (30 * MiB + 4096, 2 * MiB)], seed=11)
    source = tmp_path / "source.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, source)
    disk = rig.host.images / f"{uuid.uuid4().hex}.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", disk, str(size))
    # The host serves the disk's guest data through qemu-nbd (its url_roots: its directory).
    with QemuNbd(str(disk), "qcow2", str(rig.host.dir / f"{uuid.uuid4().hex[:8]}.sock")) as server:
        ticket_id = str(uuid.uuid4())
        for daemon, url in (
            (rig.host, server.url),
            (rig.proxy, f"https://{netns.HOST_ADDRESS}:{rig.host.port}/images/{ticket_id}"),
        ):
            ticket = {
                "uuid": ticket_id,
                "size": size,
                "ops": ["write"],
                "timeout": 300,
                "url": url,
                "transfer_id": f"qcow2-{ticket_id[:8]}",
            }
            daemon.result("Ticket.add", ticket=ticket)
        url = f"https://127.0.0.1:{rig.proxy.port}/images/{ticket_id}"
        ovirt_client(rig, client_python, "upload", source, url)
        back = tmp_path / "back.raw"
        ovirt_client(rig, client_python, "download", url, back)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", disk, raw)
    qemu_img("compare", "-f", "raw", "-F", "raw", back, raw)
