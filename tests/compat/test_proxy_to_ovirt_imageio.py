"""Our proxy in front of ovirt-imageio 2.5.1's daemon: hosts that still run
ovirt-imageio behind an engine whose proxy is ours.

The reference daemon advertises no ``size`` in OPTIONS (the proxy learns
it from a ranged GET) and ignores the extents' ``start`` and ``length``
(the proxy clips its answer). Both daemons use one CA, made by our PKI
code; the reference serves TLS on loopback and gets its tickets over its
HTTP ticket API (bench/daemons.py), our proxy over JSON-RPC.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.daemons import Theirs
from tests.integration.proxypair import stop
from tests.support.daemon import Daemon, ini, new_directory
from vdsm_imageio.pki import ensure_local_pki

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

CLIENT = ROOT / ".venv" / "bin" / "vdsm-imageio"
MiB = 1024**2
SIZE = 48 * MiB + 4096
RUNS = [(0, 4096), (MiB + 512, 3 * MiB), (20 * MiB, 9 * MiB + 7), (SIZE - MiB, MiB)]
TIMEOUT = 300


@pytest.fixture(scope="module")
def rig(reference_venv: Path) -> Iterator[tuple[Theirs, Daemon]]:
    base = new_directory()
    pki = ensure_local_pki(base / "pki")
    theirs = Theirs(
        base / "theirs",
        buffer_size=None,
        program=reference_venv / "bin" / "ovirt-imageio",
        pki=pki.ca_file.parent,
    )
    theirs.start()
    try:
        # A proxy profile on the directory whose CA signed theirs.
        proxy = Daemon(base, ini({"control": {"ticket_port": 0}}), proxy=True)
        try:
            yield theirs, proxy
        finally:
            stop(proxy)
    finally:
        theirs.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def add(theirs: Theirs, proxy: Daemon, path: Path, ops: list[str]) -> str:
    ticket_id = str(uuid.uuid4())
    ticket = {
        "uuid": ticket_id,
        "size": SIZE,
        "ops": ops,
        "timeout": 300,
        "url": path.as_uri(),
        "transfer_id": f"proxied-{ticket_id[:8]}",
        "sparse": True,
    }
    theirs.add_ticket(ticket)
    proxy.result("Ticket.add", ticket={**ticket, "url": theirs.data_url + ticket_id})
    return ticket_id


def image(path: Path) -> None:
    rng = random.Random(3)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length in RUNS:
            f.seek(offset)
            f.write(rng.randbytes(length))


def get(conn: http.client.HTTPConnection, target: str) -> tuple[int, bytes]:
    conn.request("GET", target)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_options_through_our_proxy_of_an_ovirt_imageio_host(
    rig: tuple[Theirs, Daemon], tmp_path: Path
) -> None:
    theirs, proxy = rig
    disk = tmp_path / "disk.raw"
    image(disk)
    ticket_id = add(theirs, proxy, disk, ["read", "write"])
    conn = proxy.https()
    conn.request("OPTIONS", f"/images/{ticket_id}")
    resp = conn.getresponse()
    options = json.loads(resp.read())
    assert resp.status == 200
    assert options["features"] == ["checksum", "extents", "zero", "flush"]
    # Not advertised by ovirt-imageio 2.5.1: learned from a ranged GET.
    assert options["size"] == SIZE
    assert options["unix_socket"] == proxy.unix_socket
    # Extents through the proxy are the host's, clipped to what was asked.
    ctx = ssl.create_default_context(cafile=str(theirs.ca))
    direct = http.client.HTTPSConnection("127.0.0.1", theirs.port, context=ctx, timeout=60)
    status, whole = get(direct, f"/images/{ticket_id}/extents")
    assert status == 200
    status, through = get(conn, f"/images/{ticket_id}/extents")
    assert status == 200 and json.loads(through) == json.loads(whole)
    status, part = get(conn, f"/images/{ticket_id}/extents?start={MiB}&length={MiB}")
    assert status == 200
    extents = json.loads(part)
    assert extents[0]["start"] == MiB
    assert sum(e["length"] for e in extents) == MiB


def test_our_client_through_our_proxy_to_an_ovirt_imageio_host(
    rig: tuple[Theirs, Daemon], tmp_path: Path
) -> None:
    theirs, proxy = rig
    src = tmp_path / "src.raw"
    image(src)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x55" * SIZE)
    url = f"https://127.0.0.1:{proxy.port}/images/{add(theirs, proxy, disk, ['write'])}"
    argv = [str(CLIENT), "upload", str(src), url, "--cafile", str(proxy.ca), "-v"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    # Verified by a checksum ovirt-imageio computed on its side.
    assert "verified blake2b" in done.stderr
    assert disk.read_bytes() == src.read_bytes()
    back = tmp_path / "back.raw"
    argv = [str(CLIENT), "download", url, str(back), "--cafile", str(proxy.ca), "-v"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    assert back.read_bytes() == src.read_bytes()
