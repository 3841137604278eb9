"""The shipped hook hooks/after_ticket_remove/50-transfer-record, run as the
runner runs it: status JSON on stdin, TRANSFER_RECORD in the environment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

HOOK = Path(__file__).resolve().parents[2] / "hooks" / "after_ticket_remove" / "50-transfer-record"


def removed(**kw: Any) -> dict[str, Any]:
    status = {
        "uuid": "secret",
        "transfer_id": "tr-1",
        "size": 4096,
        "ops": ["read", "write"],
        "timeout": 300,
        "expires_in": 12,
        "inactivity_timeout": 60,
        "idle_time": 3,
        "active": False,
        "connections": 0,
        "transferred": 4096,
        "canceled": True,
        "sparse": True,
        "dirty": False,
        "url": "file:///x",
        "duration": 12.5,
        "interrupted": False,
    }
    status.update(kw)
    return status


def run_hook(status: Any, record: Path | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "EVENT": "after_ticket_remove"}
    if record is not None:
        env["TRANSFER_RECORD"] = str(record)
    stdin = status if isinstance(status, str) else json.dumps(status)
    return subprocess.run(
        [str(HOOK)], input=stdin, env=env, capture_output=True, text=True, timeout=30
    )


def lines(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


def test_hook_is_shipped_executable() -> None:
    assert HOOK.stat().st_mode & 0o111


def test_appends_one_line_per_transfer(tmp_path: Path) -> None:
    record = tmp_path / "log" / "transfers.jsonl"
    assert run_hook(removed(), record).returncode == 0
    assert run_hook(removed(transfer_id="tr-2", transferred=1024), record).returncode == 0
    first, second = lines(record)
    assert set(first) == {"time", "transfer_id", "ops", "size", "transferred", "duration", "result"}
    assert first["transfer_id"] == "tr-1"
    assert first["ops"] == ["read", "write"]
    assert first["size"] == 4096
    assert first["transferred"] == 4096
    assert first["duration"] == 12.5
    assert first["result"] == "completed"
    assert second["transfer_id"] == "tr-2"
    assert "secret" not in record.read_text()


@pytest.mark.parametrize(
    "transferred, interrupted, result",
    [
        (4096, False, "completed"),
        (4096, True, "completed"),
        (1024, True, "canceled"),
        (1024, False, "partial"),
        (0, False, "partial"),
    ],
)
def test_result(tmp_path: Path, transferred: int, interrupted: bool, result: str) -> None:
    record = tmp_path / "transfers.jsonl"
    run_hook(removed(transferred=transferred, interrupted=interrupted), record)
    assert lines(record)[0]["result"] == result


def test_without_record_file_fails_with_reason(tmp_path: Path) -> None:
    proc = run_hook(removed(), None)
    assert proc.returncode == 1
    assert "TRANSFER_RECORD" in proc.stderr


def test_unreadable_status_fails_with_reason(tmp_path: Path) -> None:
    record = tmp_path / "transfers.jsonl"
    proc = run_hook("not json", record)
    assert proc.returncode == 1
    assert "status" in proc.stderr
    assert not record.exists()


def test_unwritable_record_fails_with_reason(tmp_path: Path) -> None:
    record = tmp_path / "a-file" / "transfers.jsonl"
    (tmp_path / "a-file").write_text("")
    proc = run_hook(removed(), record)
    assert proc.returncode == 1
    assert "cannot append" in proc.stderr
