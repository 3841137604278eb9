"""Volume tickets on file domains through the real daemon (block domains,
leases and device loss run in the VM lane: tests/vm)."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Daemon

MiB = 1024**2


def make_volume(d: Daemon, size: int = 8 * MiB) -> dict[str, Any]:
    ids = {"sd_id": str(uuid.uuid4()), "img_id": str(uuid.uuid4()),
           "vol_id": str(uuid.uuid4())}
    # <file_root>/<mount>/<sd_id>/images/<img_id>/<vol_id>, as vdsm lays it out.
    path = d.images / "server:_export" / ids["sd_id"] / "images" / ids["img_id"]
    path.mkdir(parents=True)
    with open(path / ids["vol_id"], "wb") as f:
        f.truncate(size)
    return {"domain": "file", **ids, "path": path / ids["vol_id"]}


def volume_ticket(vol: dict[str, Any], ops: list[str], size: int = 8 * MiB) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "size": size, "ops": ops, "timeout": 300,
            "transfer_id": f"vol-{uuid.uuid4().hex[:8]}",
            "volume": {k: v for k, v in vol.items() if k != "path"}}


def link_of(d: Daemon, vol: dict[str, Any]) -> Path:
    return d.dir / "run" / "storage" / vol["sd_id"] / vol["img_id"] / vol["vol_id"]


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
    ticket = volume_ticket({"domain": "block", "sd_id": str(uuid.uuid4()),
                            "img_id": str(uuid.uuid4()), "vol_id": str(uuid.uuid4())},
                           ["read"])
    reply = daemon.call("Ticket.add", ticket=ticket)
    assert reply["error"]["code"] in (200, 201), reply
    assert ticket["uuid"] not in [t["uuid"] for t in daemon.result("Ticket.list")]
