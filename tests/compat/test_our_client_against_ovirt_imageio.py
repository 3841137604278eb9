"""Our client (``vdsm-imageio upload|download``) against ovirt-imageio
2.5.1's daemon: it uses only the /images API, so it works there too.

The reference daemon runs from its own virtual environment
(tests/compat/setup-ovirt-imageio.sh) with certificates made by our PKI
code, TLS on loopback and its own abstract unix socket; tickets go in
through its HTTP ticket API (bench/daemons.py starts and drives it).
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.daemons import Theirs
from vdsm_imageio.pki import ensure_local_pki

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

CLIENT = ROOT / ".venv" / "bin" / "vdsm-imageio"
MiB = 1024**2
SIZE = 64 * MiB
RUNS = [(0, 4096), (MiB + 512, 3 * MiB), (20 * MiB, 9 * MiB + 7), (SIZE - MiB, MiB)]
TIMEOUT = 300


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory, reference_venv: Path) -> Iterator[Theirs]:
    base = tmp_path_factory.mktemp("theirs")
    pki = ensure_local_pki(base / "pki")
    daemon = Theirs(
        base / "daemon",
        buffer_size=4 * MiB,
        program=reference_venv / "bin" / "ovirt-imageio",
        pki=pki.ca_file.parent,
    )
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def ticket(daemon: Theirs, path: Path, ops: list[str]) -> str:
    ticket_id = str(uuid.uuid4())
    daemon.add_ticket(
        {
            "uuid": ticket_id,
            "size": SIZE,
            "ops": ops,
            "timeout": 300,
            "url": path.as_uri(),
            "transfer_id": f"our-client-{ticket_id[:8]}",
            "sparse": True,
        }
    )
    return daemon.data_url + ticket_id


def client(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(CLIENT), *(str(a) for a in args), "-v"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return done


def same(a: Path, b: Path) -> None:
    done = subprocess.run(
        ["qemu-img", "compare", "-U", str(a), str(b)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def image(path: Path) -> None:
    rng = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length in RUNS:
            f.seek(offset)
            f.write(rng.randbytes(length))


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_upload_and_download_with_verification(
    theirs: Theirs, tmp_path: Path, transport: str
) -> None:
    src = tmp_path / "src.raw"
    image(src)
    qcow2 = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", src, qcow2], check=True, timeout=60)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\x77" * SIZE)  # a used disk: its holes must be zeroed
    extra: list[str | Path] = ["--cafile", theirs.ca]
    if transport == "tls":
        extra.append("--no-unix-socket")

    done = client("upload", qcow2, ticket(theirs, disk, ["write"]), *extra, "--state-dir", tmp_path)
    assert f"transport={transport}" in done.stderr
    assert "verified blake2b" in done.stderr, "ovirt-imageio computes checksums"
    same(src, disk)

    read_url = ticket(theirs, disk, ["read"])
    for fmt in ("raw", "qcow2"):
        target = tmp_path / f"out.{fmt}"
        done = client("download", read_url, target, "--format", fmt, *extra)
        assert "verified blake2b" in done.stderr
        same(src, target)
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", target],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert info["format"] == fmt


def test_checksum_of_their_disk_equals_ours_of_the_file(theirs: Theirs, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    image(disk)
    url = ticket(theirs, disk, ["read"])
    remote = json.loads(client("checksum", url, "--cafile", theirs.ca).stdout)
    local = json.loads(client("checksum", disk).stdout)
    assert remote == local
