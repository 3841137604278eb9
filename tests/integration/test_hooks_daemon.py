"""Hooks in a real daemon: vetoes over both control APIs, the shipped
transfer-record hook, and after hooks that fail without harm."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon, MakeDaemon

REPO = Path(__file__).resolve().parents[2]
RECORD_HOOK = REPO / "hooks" / "after_ticket_remove" / "50-transfer-record"
MiB = 1024**2


def install(daemon: Daemon, event: str, name: str, script: str) -> Path:
    path = daemon.dir / "hooks" / event / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


def new_ticket(daemon: Daemon, size: int = MiB) -> dict[str, Any]:
    path = daemon.images / f"disk-{uuidlib.uuid4()}.raw"
    with open(path, "wb") as f:
        f.truncate(size)
    return {
        "uuid": str(uuidlib.uuid4()),
        "size": size,
        "ops": ["write"],
        "timeout": 300,
        "url": path.as_uri(),
        "transfer_id": f"tr-{uuidlib.uuid4()}",
    }


def http_request(daemon: Daemon, method: str, ticket_id: str, body: Any = None) -> tuple[int, str]:
    con = daemon.tickets()
    with contextlib.closing(con):
        con.request(
            method,
            f"/tickets/{ticket_id}",
            body=None if body is None else json.dumps(body).encode(),
        )
        res = con.getresponse()
        return res.status, res.read().decode()


def upload(daemon: Daemon, ticket_id: str, data: bytes) -> None:
    con = daemon.https()
    con.request(
        "PUT",
        f"/images/{ticket_id}",
        body=data,
        headers={"Content-Range": f"bytes 0-{len(data) - 1}/*"},
    )
    res = con.getresponse()
    res.read()
    con.close()
    assert res.status == 200


def test_vetoing_before_add_hook_fails_add_with_300_and_no_ticket(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    install(daemon, "before_ticket_add", "50-deny", 'echo "host is in maintenance" >&2; exit 1')
    ticket = new_ticket(daemon)
    error = daemon.call("Ticket.add", ticket=ticket)["error"]
    assert error["code"] == 300
    assert error["data"]["hook"] == "50-deny"
    assert error["data"]["event"] == "before_ticket_add"
    assert "host is in maintenance" in error["data"]["stderr"]
    assert daemon.call("Ticket.status", uuid=ticket["uuid"])["error"]["code"] == 100
    assert daemon.result("Ticket.list") == []
    # The HTTP ticket API answers a veto with 403, and adds nothing either.
    status, text = http_request(daemon, "PUT", ticket["uuid"], ticket)
    assert status == 403
    assert "50-deny" in text
    assert http_request(daemon, "GET", ticket["uuid"])[0] == 404


def test_before_add_hook_sees_the_ticket_and_allows_it(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    seen = daemon.dir / "seen.json"
    install(daemon, "before_ticket_add", "50-look", f'cat > {seen}; echo "$EVENT" >> {seen}.env')
    ticket = new_ticket(daemon)
    daemon.result("Ticket.add", ticket=ticket)
    status = json.loads(seen.read_text())
    assert status["transfer_id"] == ticket["transfer_id"]
    assert status["size"] == MiB
    assert Path(f"{seen}.env").read_text() == "before_ticket_add\n"


def test_vetoing_before_remove_hook_keeps_ticket_live(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    hook = install(daemon, "before_ticket_remove", "50-keep", 'echo "not yet" >&2; exit 7')
    ticket = new_ticket(daemon)
    daemon.result("Ticket.add", ticket=ticket)
    error = daemon.call("Ticket.remove", uuid=ticket["uuid"])["error"]
    assert error["code"] == 300
    assert error["data"]["status"] == 7
    assert "not yet" in error["data"]["stderr"]
    assert http_request(daemon, "DELETE", ticket["uuid"])[0] == 403
    assert daemon.status(ticket["uuid"])["canceled"] is False
    upload(daemon, ticket["uuid"], b"x" * 4096)
    hook.unlink()
    assert daemon.result("Ticket.remove", uuid=ticket["uuid"]) is True


def test_failing_after_hooks_do_not_fail_the_operation(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    install(daemon, "after_ticket_add", "50-fail", 'echo "broken" >&2; exit 1')
    install(daemon, "after_ticket_remove", "50-fail", 'echo "broken" >&2; exit 1')
    ticket = new_ticket(daemon)
    daemon.result("Ticket.add", ticket=ticket)
    assert daemon.result("Ticket.remove", uuid=ticket["uuid"]) is True
    wait_for(lambda: daemon.log().count("hook=50-fail") >= 2 and "| broken" in daemon.log())


def test_transfer_record_hook_writes_one_line_per_removed_ticket(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    target = daemon.dir / "hooks" / "after_ticket_remove" / RECORD_HOOK.name
    target.parent.mkdir(parents=True)
    target.symlink_to(RECORD_HOOK)
    record = daemon.dir / "transfers.jsonl"

    full, partial, untouched = (new_ticket(daemon) for _ in range(3))
    for ticket in (full, partial, untouched):
        daemon.result("Ticket.add", ticket=ticket)
    upload(daemon, full["uuid"], os.urandom(MiB))
    upload(daemon, partial["uuid"], os.urandom(MiB // 4))

    assert daemon.result("Ticket.remove", uuid=full["uuid"]) is True
    assert http_request(daemon, "DELETE", partial["uuid"])[0] == 204
    assert daemon.result("Ticket.remove", uuid=untouched["uuid"]) is True
    # Removing again removes nothing and records nothing.
    assert daemon.result("Ticket.remove", uuid=full["uuid"]) is True

    wait_for(lambda: record.exists() and len(record.read_text().splitlines()) >= 3)
    time.sleep(0.3)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(lines) == 3
    by_id = {line["transfer_id"]: line for line in lines}
    assert by_id[full["transfer_id"]]["result"] == "completed"
    assert by_id[full["transfer_id"]]["transferred"] == MiB
    assert by_id[partial["transfer_id"]]["result"] == "partial"
    assert by_id[partial["transfer_id"]]["transferred"] == MiB // 4
    assert by_id[untouched["transfer_id"]]["transferred"] == 0
    for line in lines:
        assert line["ops"] == ["write"]  # as the ticket gave them
        assert line["size"] == MiB
        assert 0 <= line["duration"] < 60
    text = record.read_text()
    assert all(t["uuid"] not in text for t in (full, partial, untouched))


def wait_for(condition: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_after_transfer_idle_runs_when_an_upload_ends(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    seen = daemon.dir / "idle"
    install(
        daemon, "after_transfer_idle", "50-note", f'echo "$EVENT $TRANSFER_ID $(cat)" >> {seen}'
    )
    ticket = new_ticket(daemon)
    daemon.result("Ticket.add", ticket=ticket)
    time.sleep(0.5)
    assert not seen.exists(), "idle before anything moved"
    upload(daemon, ticket["uuid"], os.urandom(MiB))
    wait_for(seen.exists)
    time.sleep(0.5)
    lines = seen.read_text().splitlines()
    assert len(lines) == 1
    event, transfer_id, status = lines[0].split(" ", 2)
    assert (event, transfer_id) == ("after_transfer_idle", ticket["transfer_id"])
    assert json.loads(status)["transferred"] == MiB
    assert json.loads(status)["active"] is False


def test_replace_runs_the_remove_and_add_hooks(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon()
    log = daemon.dir / "events.log"
    for event in ("before_ticket_add", "after_ticket_add", "before_ticket_remove"):
        install(daemon, event, "10-log", f'echo "$EVENT $TRANSFER_ID" >> {log}')
    install(
        daemon,
        "after_ticket_remove",
        "10-log",
        f"echo \"$EVENT $TRANSFER_ID $(python3 -c 'import json,sys; "
        f'print(json.load(sys.stdin)["interrupted"])\')" >> {log}',
    )
    ticket = new_ticket(daemon)
    assert http_request(daemon, "PUT", ticket["uuid"], ticket)[0] == 200
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
    log.write_text("")
    renewed = {**ticket, "timeout": 900, "transfer_id": "renewed"}
    assert http_request(daemon, "PUT", ticket["uuid"], renewed)[0] == 200
    wait_for(lambda: len(log.read_text().splitlines()) == 4)
    # For a hook, a replacement is the old transfer removed and the new added.
    lines = log.read_text().splitlines()
    assert lines[:2] == [
        "before_ticket_add renewed",
        f"before_ticket_remove {ticket['transfer_id']}",
    ]
    assert sorted(lines[2:]) == sorted(
        ["after_ticket_add renewed", f"after_ticket_remove {ticket['transfer_id']} False"]
    )


@pytest.mark.parametrize("event", ["before_ticket_add", "before_ticket_remove"])
def test_vetoed_replace_keeps_the_old_ticket(make_daemon: MakeDaemon, event: str) -> None:
    daemon = make_daemon()
    ticket = new_ticket(daemon)
    assert http_request(daemon, "PUT", ticket["uuid"], ticket)[0] == 200
    install(daemon, event, "50-deny", 'echo "keep it" >&2; exit 1')
    other = {**ticket, "size": MiB // 2, "transfer_id": "other"}
    status, text = http_request(daemon, "PUT", ticket["uuid"], other)
    assert status == 403
    assert "50-deny" in text
    kept = daemon.status(ticket["uuid"])
    assert (kept["transfer_id"], kept["size"], kept["canceled"]) == (
        ticket["transfer_id"],
        MiB,
        False,
    )
    upload(daemon, ticket["uuid"], b"x" * 4096)
    # vdsm's verb answers what vdsm relays from that 403.
    error = daemon.call("Host.add_image_ticket", ticket=other)["error"]
    assert error["code"] == 482
    assert error["message"].startswith(
        "Image daemon request failed: "
        f"\"status=403, reason=Forbidden, error=Hook '50-deny' vetoed {event}"
    )
