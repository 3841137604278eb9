"""The hook runner: discovery, the hook's view, vetoes, time limits, logging."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from tests.support.errors import detail
from vdsm_imageio.errors import HookFailed
from vdsm_imageio.hooks import EVENTS, Hooks, discover

STATUS = {
    "uuid": "secret-uuid",
    "transfer_id": "transfer-1",
    "size": 1024,
    "ops": ["read"],
    "transferred": 0,
}


def hook(root: Path, event: str, name: str, body: str, mode: int = 0o755) -> Path:
    path = root / event / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def test_hooks_run_in_file_name_order_skipping_hidden_and_non_executables(tmp_path: Path) -> None:
    hook(tmp_path, "after_ticket_add", "20-second", "true")
    hook(tmp_path, "after_ticket_add", "10-first", "true")
    hook(tmp_path, "after_ticket_add", ".hidden", "true")
    hook(tmp_path, "after_ticket_add", "15-not-executable", "true", mode=0o644)
    (tmp_path / "after_ticket_add" / "12-directory").mkdir()
    names = [p.name for p in discover(tmp_path, "after_ticket_add")]
    assert names == ["10-first", "20-second"]


def test_missing_event_directory_has_no_hooks(tmp_path: Path) -> None:
    assert discover(tmp_path, "before_ticket_add") == []
    assert discover(tmp_path / "nowhere", "before_ticket_add") == []


def test_hook_reads_status_on_stdin_and_ids_in_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAEMON_ONLY", "not for hooks")
    out = tmp_path / "out"
    out.mkdir()
    hook(
        tmp_path / "hooks",
        "before_ticket_add",
        "10-record",
        f"cat > {out}/stdin.json; env > {out}/env",
    )
    hooks = Hooks(str(tmp_path / "hooks"), timeout=10, env={"TRANSFER_RECORD": "/r"})
    hooks.run("before_ticket_add", STATUS)
    assert json.loads((out / "stdin.json").read_text()) == STATUS
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert env["TICKET_UUID"] == "secret-uuid"
    assert env["TRANSFER_ID"] == "transfer-1"
    assert env["EVENT"] == "before_ticket_add"
    assert env["TRANSFER_RECORD"] == "/r"
    assert "DAEMON_ONLY" not in env


def test_failing_before_hook_vetoes_with_its_stderr_and_stops_the_rest(tmp_path: Path) -> None:
    marker = tmp_path / "later-ran"
    hook(
        tmp_path, "before_ticket_remove", "10-deny", 'echo "transfer is being audited" >&2; exit 3'
    )
    hook(tmp_path, "before_ticket_remove", "20-later", f"touch {marker}")
    hooks = Hooks(str(tmp_path), timeout=10)
    with pytest.raises(HookFailed) as e:
        hooks.run("before_ticket_remove", STATUS)
    assert e.value.fields["hook"] == "10-deny"
    assert e.value.fields["event"] == "before_ticket_remove"
    assert e.value.fields["status"] == 3
    assert "transfer is being audited" in detail(e.value, "stderr", str)
    assert not marker.exists()


def test_before_hooks_that_succeed_let_the_operation_pass(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hook(tmp_path, "before_ticket_add", "10-ok", f"touch {marker}")
    Hooks(str(tmp_path), timeout=10).run("before_ticket_add", STATUS)
    assert marker.exists()


def test_hook_outliving_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hook(tmp_path, "before_ticket_add", "10-hang", f"sleep 60 & echo $! > {pidfile}; wait")
    hooks = Hooks(str(tmp_path), timeout=0.5)
    start = time.monotonic()
    with pytest.raises(HookFailed) as e:
        hooks.run("before_ticket_add", STATUS)
    assert time.monotonic() - start < 10
    assert "killed after 0.5 seconds" in detail(e.value, "stderr", str)
    child = int(pidfile.read_text())
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its reaper."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


def test_hook_that_cannot_start_vetoes(tmp_path: Path) -> None:
    path = tmp_path / "before_ticket_add" / "10-bad-interpreter"
    path.parent.mkdir()
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(0o755)
    with pytest.raises(HookFailed) as e:
        Hooks(str(tmp_path), timeout=10).run("before_ticket_add", STATUS)
    assert e.value.fields["status"] == 126


def test_event_without_hooks_wakes_no_runner(tmp_path: Path) -> None:
    # Most hosts have no hooks: a ticket verb must not pay for a runner
    # thread's wake-up (or the thread) for nothing.
    hook(tmp_path, "after_ticket_add", ".hidden", "true")
    hook(tmp_path, "after_ticket_add", "15-not-executable", "true", mode=0o644)
    (tmp_path / "after_ticket_add" / "12-directory").mkdir()
    hooks = Hooks(str(tmp_path), timeout=10)
    assert not hooks.installed("after_ticket_add")
    assert not hooks.installed("after_ticket_remove")
    hooks.run("after_ticket_add", STATUS)
    hooks.run("after_ticket_remove", STATUS)
    assert hooks._worker is None
    hooks.close(timeout=1)


def test_hook_installed_while_running_is_seen_at_the_next_event(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hooks = Hooks(str(tmp_path / "hooks"), timeout=10)
    hooks.run("after_ticket_add", STATUS)
    hook(tmp_path / "hooks", "after_ticket_add", "10-touch", f"touch {marker}")
    assert hooks.installed("after_ticket_add")
    hooks.run("after_ticket_add", STATUS)
    hooks.close(timeout=10)
    assert marker.exists()


def test_after_hooks_run_in_order_in_the_background(tmp_path: Path) -> None:
    log_file = tmp_path / "events"
    hook(
        tmp_path / "hooks",
        "after_ticket_add",
        "10-log",
        f'sleep 0.2; echo "$EVENT $TRANSFER_ID" >> {log_file}',
    )
    hook(
        tmp_path / "hooks",
        "after_ticket_remove",
        "10-log",
        f'echo "$EVENT $TRANSFER_ID" >> {log_file}',
    )
    hooks = Hooks(str(tmp_path / "hooks"), timeout=10)
    start = time.monotonic()
    hooks.run("after_ticket_add", {**STATUS, "transfer_id": "a"})
    hooks.run("after_ticket_remove", {**STATUS, "transfer_id": "a"})
    hooks.run("after_ticket_add", {**STATUS, "transfer_id": "b"})
    # The callers did not wait for the hooks.
    assert time.monotonic() - start < 0.2
    hooks.close(timeout=10)
    assert log_file.read_text().splitlines() == [
        "after_ticket_add a",
        "after_ticket_remove a",
        "after_ticket_add b",
    ]


def test_after_hook_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "second-ran"
    hook(tmp_path, "after_ticket_remove", "10-fail", 'echo "disk full" >&2; exit 1')
    hook(tmp_path, "after_ticket_remove", "20-next", f"touch {marker}")
    hooks = Hooks(str(tmp_path), timeout=10)
    with caplog.at_level(logging.INFO, logger="vdsm_imageio.hooks"):
        hooks.run("after_ticket_remove", STATUS)
        hooks.close(timeout=10)
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("hook=10-fail" in m and "status=1" in m for m in failures)
    assert any("disk full" in m for m in failures)
    # One failing after hook does not stop the next one.
    assert marker.exists()
    assert all("secret-uuid" not in r.getMessage() for r in caplog.records)


def test_after_events_after_close_are_dropped(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hook(tmp_path, "after_ticket_add", "10-touch", f"touch {marker}")
    hooks = Hooks(str(tmp_path), timeout=10)
    hooks.close(timeout=1)
    hooks.run("after_ticket_add", STATUS)
    time.sleep(0.3)
    assert not marker.exists()


def test_unknown_event_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Hooks(str(tmp_path), timeout=1).run("before_lunch", STATUS)


def test_events_are_those_of_the_design() -> None:
    assert set(EVENTS) == {
        "before_ticket_add",
        "after_ticket_add",
        "before_ticket_remove",
        "after_ticket_remove",
        "after_transfer_idle",
    }


def test_hook_output_is_logged_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hook(
        tmp_path,
        "before_ticket_add",
        "10-chatty",
        "echo hello; head -c 1000000 /dev/zero | tr '\\0' x",
    )
    with caplog.at_level(logging.INFO, logger="vdsm_imageio.hooks"):
        Hooks(str(tmp_path), timeout=10).run("before_ticket_add", STATUS)
    out = [r.getMessage() for r in caplog.records if "stdout" in r.getMessage()]
    assert any(m.endswith("| hello") for m in out)
    assert sum(len(m) for m in out) < 100_000


def test_hook_runs_in_root_directory(tmp_path: Path) -> None:
    out = tmp_path / "cwd"
    hook(tmp_path, "before_ticket_add", "10-pwd", f"pwd > {out}")
    Hooks(str(tmp_path), timeout=10).run("before_ticket_add", STATUS)
    assert out.read_text().strip() == "/"
