"""Our /checksum equals ovirt-imageio 2.5.1's ``client.checksum()``.

ovirt-imageio's client computes the checksum locally, reading the image's
guest data through its own qemu-nbd (tests/compat/checksum_driver.py, run
in the compatibility virtual environment); we compute it in a real daemon
over HTTPS, for raw files with holes and unaligned sizes, a file whose
zeros are written data, and a qcow2 image served through qemu-nbd, for
every algorithm both can compute and several block sizes. Run alone with
``pytest -m compat``.
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
from typing import Any
from urllib.parse import urlsplit

import pytest

from storage.qemu_nbd import QemuNbd
from tests.compat.test_ovirt_imageio_client import (
    ROOT,
    Daemon,
    running_daemon,
)

pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

DRIVER = ROOT / "tests" / "compat" / "checksum_driver.py"
KiB = 1024
MiB = 1024**2
SIZE = 37 * MiB + 4097
RUNS = [
    (0, 4096),
    (MiB + 512, 3 * MiB - 1000),
    (8 * MiB - 3, 9 * MiB + 7),
    (20 * MiB, 4 * MiB),
    (SIZE - 5000, 5000),
]
# ovirt-imageio computes these; it fails on hashlib names that are not
# attributes of the module (sm3, sha512_256, ...) and on shake_*.
ALGORITHMS = [
    "blake2b",
    "blake2s",
    "md5",
    "sha1",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sha3_224",
    "sha3_256",
    "sha3_384",
    "sha3_512",
]
BLOCK_SIZES = [MiB, 4 * MiB, 16 * MiB, MiB + 4096, 5 * MiB + 12288]
CMD_TIMEOUT = 600


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("compat-checksum")) as d:
        yield d


def reference(python: Path, image: Path, pairs: list[tuple[str, int]]) -> dict[str, Any]:
    cmd = [str(python), str(DRIVER), str(image), *(f"{a}:{b}" for a, b in pairs)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    out: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return out


def add_ticket(daemon: Daemon, url: str, size: int) -> str:
    ticket_id = str(uuid.uuid4())
    daemon.call(
        "Ticket.add",
        ticket={
            "uuid": ticket_id,
            "size": size,
            "ops": ["read"],
            "timeout": 300,
            "url": url,
            "transfer_id": f"compat-sum-{ticket_id[:8]}",
        },
    )
    return ticket_id


def ours(daemon: Daemon, ticket_id: str, pairs: list[tuple[str, int]]) -> dict[str, Any]:
    parts = urlsplit(daemon.data_url)
    assert parts.hostname is not None, daemon.data_url
    ctx = ssl.create_default_context(cafile=str(daemon.ca_file))
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=300)
    out: dict[str, Any] = {}
    try:
        for algorithm, block_size in pairs:
            conn.request(
                "GET",
                f"{parts.path}{ticket_id}/checksum?algorithm={algorithm}&block_size={block_size}",
            )
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body
            out[f"{algorithm}:{block_size}"] = json.loads(body)
    finally:
        conn.close()
    return out


def write_image(path: Path, size: int = SIZE, *, zeros_as_data: bool = False) -> None:
    rnd = random.Random(11)
    with path.open("wb") as f:
        if zeros_as_data:
            for pos in range(0, size, 8 * MiB):
                f.write(bytes(min(8 * MiB, size - pos)))
        f.truncate(size)
        for start, length in RUNS:
            f.seek(start)
            f.write(rnd.randbytes(length))


def compare(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert mine.keys() == theirs.keys()
    for key, ref in theirs.items():
        assert "error" not in ref, f"ovirt-imageio could not compute {key}: {ref['error']}"
        assert mine[key] == ref, key


def every_algorithm() -> list[tuple[str, int]]:
    return [(a, 4 * MiB) for a in ALGORITHMS]


def every_block_size() -> list[tuple[str, int]]:
    return [(a, b) for a in ("blake2b", "sha256") for b in BLOCK_SIZES]


def test_raw_image_with_holes_every_algorithm_and_block_size(
    client_python: Path, daemon: Daemon
) -> None:
    image = daemon.local_dir / "images" / "holes.raw"
    image.parent.mkdir(exist_ok=True)
    write_image(image)
    pairs = every_algorithm() + every_block_size()
    ticket_id = add_ticket(daemon, image.as_uri(), SIZE)
    compare(ours(daemon, ticket_id, pairs), reference(client_python, image, pairs))


def test_zeros_written_as_data(client_python: Path, daemon: Daemon) -> None:
    # Extents call it all data; zero blocks are found by reading.
    image = daemon.local_dir / "images" / "written.raw"
    image.parent.mkdir(exist_ok=True)
    write_image(image, zeros_as_data=True)
    pairs = [("blake2b", 4 * MiB), ("sha1", MiB), ("md5", 16 * MiB)]
    ticket_id = add_ticket(daemon, image.as_uri(), SIZE)
    compare(ours(daemon, ticket_id, pairs), reference(client_python, image, pairs))


def test_qcow2_guest_data_through_nbd(client_python: Path, daemon: Daemon) -> None:
    raw = daemon.local_dir / "images" / "guest.raw"
    raw.parent.mkdir(exist_ok=True)
    write_image(raw)
    qcow2 = raw.with_suffix(".qcow2")
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    # Allocated zero clusters over data: zero in block status, not a hole.
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -z {20 * MiB} {MiB}", str(qcow2)],
        check=True,
        capture_output=True,
        timeout=CMD_TIMEOUT,
    )
    pairs = every_algorithm() + every_block_size()
    sock = daemon.local_dir / "guest.sock"
    with QemuNbd(str(qcow2), "qcow2", str(sock), read_only=True) as server:
        ticket_id = add_ticket(daemon, server.url, SIZE)
        mine = ours(daemon, ticket_id, pairs)
        daemon.call("Ticket.remove", uuid=ticket_id)
    # The client starts its own qemu-nbd on the file: ours has stopped.
    compare(mine, reference(client_python, qcow2, pairs))
