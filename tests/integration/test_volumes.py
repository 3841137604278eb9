"""Volume tickets on file domains through the real daemon (block domains,
leases and device loss run in the VM lane: tests/vm)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.procs import qemu_nbd_pids

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

MiB = 1024**2
KiB = 1024
CLUSTER = 64 * KiB


def make_volume(d: Daemon, size: int = 8 * MiB) -> dict[str, Any]:
    ids = {"sd_id": str(uuid.uuid4()), "img_id": str(uuid.uuid4()), "vol_id": str(uuid.uuid4())}
    # <file_root>/<mount>/<sd_id>/images/<img_id>/<vol_id>, as vdsm lays it out.
    path = d.images / "server:_export" / ids["sd_id"] / "images" / ids["img_id"]
    path.mkdir(parents=True)
    with open(path / ids["vol_id"], "wb") as f:
        f.truncate(size)
    return {"domain": "file", **ids, "path": path / ids["vol_id"]}


def volume_ticket(vol: dict[str, Any], ops: list[str], size: int = 8 * MiB) -> dict[str, Any]:
    return {
        "uuid": str(uuid.uuid4()),
        "size": size,
        "ops": ops,
        "timeout": 300,
        "transfer_id": f"vol-{uuid.uuid4().hex[:8]}",
        "volume": {k: v for k, v in vol.items() if k != "path"},
    }


def link_of(d: Daemon, vol: dict[str, Any]) -> Path:
    return Path(d.dir, "run", "storage", vol["sd_id"], vol["img_id"], vol["vol_id"])


def test_file_volume_upload_reaches_the_volume_and_link_is_removed(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    ticket = volume_ticket(vol, ["write"])
    status = daemon.result("Ticket.add", ticket=ticket)
    assert status["volume"]["vol_id"] == vol["vol_id"]
    link = link_of(daemon, vol)
    assert link.is_symlink()
    assert os.path.realpath(link) == str(vol["path"])
    data = os.urandom(8 * MiB)
    conn = daemon.unix()
    conn.request("PUT", f"/images/{ticket['uuid']}", body=data)
    assert conn.getresponse().status == 200
    conn.close()
    assert hashlib.sha256(vol["path"].read_bytes()).digest() == hashlib.sha256(data).digest()
    assert daemon.result("Ticket.remove", uuid=ticket["uuid"]) is True
    assert not link.exists() and not link.is_symlink()
    assert vol["path"].exists()


def test_shared_volume_is_torn_down_with_its_last_ticket(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    first, second = volume_ticket(vol, ["read"]), volume_ticket(vol, ["read"])
    daemon.result("Ticket.add", ticket=first)
    daemon.result("Ticket.add", ticket=second)
    link = link_of(daemon, vol)
    daemon.result("Ticket.remove", uuid=first["uuid"])
    assert link.is_symlink()
    conn = daemon.https()
    conn.request("GET", f"/images/{second['uuid']}", headers={"Range": "bytes=0-4095"})
    assert conn.getresponse().read() == b"\0" * 4096
    conn.close()
    daemon.result("Ticket.remove", uuid=second["uuid"])
    assert not link.is_symlink()


def test_missing_volume_is_200_naming_what_is_missing(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    for missing in ("sd_id", "img_id", "vol_id"):
        broken = dict(vol, **{missing: str(uuid.uuid4())})
        reply = daemon.call("Ticket.add", ticket=volume_ticket(broken, ["read"]))
        assert reply["error"]["code"] == 200, reply
        assert broken[missing] in reply["error"]["message"] + str(reply["error"].get("data"))
    # Nothing was left linked by the failed adds.
    storage = daemon.dir / "run" / "storage"
    assert not storage.exists() or not any(p.is_symlink() for p in storage.rglob("*"))


def test_block_volume_without_lvm_domain_is_volume_not_found(daemon: Daemon) -> None:
    ticket = volume_ticket(
        {
            "domain": "block",
            "sd_id": str(uuid.uuid4()),
            "img_id": str(uuid.uuid4()),
            "vol_id": str(uuid.uuid4()),
        },
        ["read"],
    )
    reply = daemon.call("Ticket.add", ticket=ticket)
    assert reply["error"]["code"] in (200, 201), reply
    assert ticket["uuid"] not in [t["uuid"] for t in daemon.result("Ticket.list")]


# Volumes served through qemu-nbd: `nbd: true`, format cow, bitmaps.


def qemu(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def make_qcow2_volume(d: Daemon, *, bitmap: str | None = None) -> dict[str, Any]:
    vol = make_volume(d)
    qemu("qemu-img", "create", "-q", "-f", "qcow2", str(vol["path"]), str(8 * MiB))
    if bitmap:
        qemu("qemu-img", "bitmap", "--add", str(vol["path"]), bitmap)
    return vol


def get_json(d: Daemon, url: str) -> Any:
    conn = d.https()
    conn.request("GET", url)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200, body
    return json.loads(body)


def test_raw_nbd_volume_upload_and_download_through_qemu_nbd(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    ticket = volume_ticket(dict(vol, nbd=True), ["write"])
    daemon.result("Ticket.add", ticket=ticket)
    [pid] = qemu_nbd_pids(daemon.dir)
    data = random.Random(7).randbytes(3 * MiB) + bytes(MiB) + random.Random(8).randbytes(4 * MiB)
    conn = daemon.unix()
    conn.request("PUT", f"/images/{ticket['uuid']}", body=data)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    resp.read()
    conn.request("GET", f"/images/{ticket['uuid']}")
    resp = conn.getresponse()
    assert resp.status == 200
    assert hashlib.sha256(resp.read()).digest() == hashlib.sha256(data).digest()
    conn.close()
    assert daemon.result("Ticket.remove", uuid=ticket["uuid"]) is True
    # qemu-nbd wrote through to the volume and is gone: stopped and reaped.
    assert hashlib.sha256(vol["path"].read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not os.path.exists(f"/proc/{pid}")
    assert qemu_nbd_pids(daemon.dir) == []
    assert not link_of(daemon, vol).is_symlink()


def test_qcow2_volume_shows_its_holes(daemon: Daemon) -> None:
    vol = make_qcow2_volume(daemon)
    qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 1 {2 * MiB} {MiB}", str(vol["path"]))
    ticket = volume_ticket(dict(vol, format="cow"), ["read"])
    daemon.result("Ticket.add", ticket=ticket)
    try:
        assert get_json(daemon, f"/images/{ticket['uuid']}/extents") == [
            {"start": 0, "length": 2 * MiB, "zero": True, "hole": True},
            {"start": 2 * MiB, "length": MiB, "zero": False, "hole": False},
            {"start": 3 * MiB, "length": 5 * MiB, "zero": True, "hole": True},
        ]
        # The guest's view, not the qcow2 file's bytes.
        conn = daemon.https()
        conn.request(
            "GET",
            f"/images/{ticket['uuid']}",
            headers={"Range": f"bytes={2 * MiB}-{2 * MiB + 4095}"},
        )
        assert conn.getresponse().read() == b"\1" * 4096
        conn.close()
    finally:
        daemon.result("Ticket.remove", uuid=ticket["uuid"])
    assert qemu_nbd_pids(daemon.dir) == []


def test_bitmap_volume_gives_dirty_extents(daemon: Daemon) -> None:
    vol = make_qcow2_volume(daemon, bitmap="checkpoint-1")
    qemu("qemu-io", "-f", "qcow2", "-c", f"write -P 3 {MiB} {2 * CLUSTER}", str(vol["path"]))
    ticket = volume_ticket(dict(vol, format="cow", bitmap="checkpoint-1"), ["read"])
    ticket["dirty"] = True
    daemon.result("Ticket.add", ticket=ticket)
    try:
        assert get_json(daemon, f"/images/{ticket['uuid']}/extents?context=dirty") == [
            {"start": 0, "length": MiB, "dirty": False, "zero": True},
            {"start": MiB, "length": 2 * CLUSTER, "dirty": True, "zero": False},
            {
                "start": MiB + 2 * CLUSTER,
                "length": 7 * MiB - 2 * CLUSTER,
                "dirty": False,
                "zero": True,
            },
        ]
    finally:
        daemon.result("Ticket.remove", uuid=ticket["uuid"])
    assert qemu_nbd_pids(daemon.dir) == []


def test_write_ticket_on_read_only_nbd_volume_is_volume_error(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    reader = volume_ticket(dict(vol, nbd=True), ["read"])
    writer = volume_ticket(dict(vol, nbd=True), ["write"])
    daemon.result("Ticket.add", ticket=reader)
    reply = daemon.call("Ticket.add", ticket=writer)
    assert reply["error"]["code"] == 201, reply
    assert "read-only" in json.dumps(reply["error"])
    assert writer["uuid"] not in [t["uuid"] for t in daemon.result("Ticket.list")]
    assert len(qemu_nbd_pids(daemon.dir)) == 1
    daemon.result("Ticket.remove", uuid=reader["uuid"])
    assert qemu_nbd_pids(daemon.dir) == []
    assert not link_of(daemon, vol).is_symlink()


def test_cow_volume_that_is_not_qcow2_fails_and_leaves_nothing(daemon: Daemon) -> None:
    vol = make_volume(daemon)
    ticket = volume_ticket(dict(vol, format="cow"), ["read"])
    reply = daemon.call("Ticket.add", ticket=ticket)
    assert reply["error"]["code"] == 201, reply
    assert "qcow2" in json.dumps(reply["error"])
    assert qemu_nbd_pids(daemon.dir) == []
    assert not link_of(daemon, vol).is_symlink()
