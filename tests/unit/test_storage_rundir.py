"""What a killed daemon leaves: children that die with it (storage.spawn),
pid files that name a process beyond doubt (storage.pidfiles), and the
start-up clean-up of the run directory (storage.rundir). Real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import pidfiles, spawn
from storage.rundir import RunDir, RunDirBusy

WAIT = 10.0
REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    _, _, state = pidfiles.process_state(pid)
    return state not in (None, "Z", "X")


def wait_dead(pid: int, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed and reaped whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(WAIT)


def sleeper(procs: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    args = ["sleep", "60", *argv]
    p = subprocess.Popen(args)
    procs.append(p)
    # Popen returns once exec closed its close-on-exec pipe, which the
    # kernel does before it sets up the new argv: until then the process's
    # cmdline may still read empty.
    want = "\0".join(args).encode() + b"\0"
    deadline = time.monotonic() + WAIT
    while pidfiles.process_state(p.pid)[0] != want:
        assert time.monotonic() < deadline, "sleep never showed its argv"
        time.sleep(0.005)
    return p


# pidfiles: the pure part.


def test_record_round_trips() -> None:
    record = pidfiles.PidRecord(1234, ("qemu-nbd", "--socket=/run/x.sock", "a b"), 98765)
    assert pidfiles.parse(record.to_json()) == record


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1234",
        "[]",
        '{"pid": 1, "argv": ["x"]}',
        '{"pid": true, "argv": ["x"]}',
        '{"pid": 12, "argv": []}',
        '{"pid": 12, "argv": [1]}',
        '{"pid": 12, "argv": ["x"], "start_time": "1"}',
        '{"pid": "12", "argv": ["x"]}',
    ],
)
def test_anything_else_is_no_record(text: str) -> None:
    assert pidfiles.parse(text) is None


def test_same_process_needs_the_argv_and_the_start_time() -> None:
    record = pidfiles.PidRecord(1234, ("qemu-nbd", "--socket=/s"), 500)
    cmdline = b"qemu-nbd\0--socket=/s\0"
    assert pidfiles.same_process(record, cmdline, 500)
    assert not pidfiles.same_process(record, cmdline, 501)
    assert not pidfiles.same_process(record, b"qemu-nbd\0--socket=/t\0", 500)
    assert not pidfiles.same_process(record, b"qemu-nbd\0--socket=/s", 500)
    assert not pidfiles.same_process(record, None, None)


def test_start_time_is_read_past_a_command_name_with_parens_and_spaces() -> None:
    stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 1000 2"
    assert pidfiles.parse_start_time(stat) == 777


def test_record_of_a_live_process_matches_it(procs: list[subprocess.Popen[bytes]]) -> None:
    p = sleeper(procs)
    record = pidfiles.record_of(p.pid, ["sleep", "60"])
    assert record.start_time is not None
    assert pidfiles.is_running(record)
    assert not pidfiles.is_running(pidfiles.PidRecord(p.pid, ("sleep", "61"), record.start_time))
    assert not pidfiles.is_running(
        pidfiles.PidRecord(p.pid, ("sleep", "60"), record.start_time + 1)
    )


# rundir: the clean-up.


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[RunDir]:
    rd = RunDir(tmp_path / "run", stop_timeout=WAIT)
    rd.lock()
    yield rd
    rd.unlock()


def record(run_dir: RunDir, name: str, pid: int, argv: list[str]) -> Path:
    path = run_dir.nbd_dir / f"{name}.pid"
    pidfiles.write(path, pidfiles.record_of(pid, argv))
    return path


def test_recorded_server_is_stopped(run_dir: RunDir, procs: list[subprocess.Popen[bytes]]) -> None:
    p = sleeper(procs)
    pid_file = record(run_dir, "a", p.pid, ["sleep", "60"])
    done = run_dir.clean()
    assert p.wait(WAIT) == -signal.SIGTERM
    assert done.processes == 1
    assert not pid_file.exists()


def test_stopped_server_is_continued_and_stopped(
    run_dir: RunDir, procs: list[subprocess.Popen[bytes]]
) -> None:
    p = sleeper(procs)
    os.kill(p.pid, signal.SIGSTOP)
    record(run_dir, "a", p.pid, ["sleep", "60"])
    assert run_dir.clean().processes == 1
    assert p.wait(WAIT) == -signal.SIGTERM


def test_server_ignoring_sigterm_is_killed(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    argv = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]
    p = subprocess.Popen(argv)
    procs.append(p)
    time.sleep(0.2)  # let the shell install the trap
    rd = RunDir(tmp_path / "run", stop_timeout=0.5)
    rd.lock()
    try:
        record(rd, "a", p.pid, argv)
        assert rd.clean().processes == 1
    finally:
        rd.unlock()
    assert p.wait(WAIT) == -signal.SIGKILL


def test_pid_now_running_another_program_is_left_alone(
    run_dir: RunDir, procs: list[subprocess.Popen[bytes]]
) -> None:
    unrelated = sleeper(procs)
    pid_file = record(run_dir, "a", unrelated.pid, ["qemu-nbd", "--socket=/x.sock", "/img"])
    done = run_dir.clean()
    assert (done.processes, done.left) == (0, 1)
    time.sleep(0.2)
    assert unrelated.poll() is None
    assert not pid_file.exists()


def test_same_argv_started_at_another_time_is_left_alone(
    run_dir: RunDir, procs: list[subprocess.Popen[bytes]]
) -> None:
    p = sleeper(procs)
    real = pidfiles.record_of(p.pid, ["sleep", "60"])
    assert real.start_time is not None
    stale = pidfiles.PidRecord(p.pid, real.argv, real.start_time - 1)
    pidfiles.write(run_dir.nbd_dir / "a.pid", stale)
    assert run_dir.clean().left == 1
    assert p.poll() is None


def test_pid_file_of_an_exited_process_is_removed(run_dir: RunDir) -> None:
    p = subprocess.Popen(["true"])
    p.wait(WAIT)
    pid_file = record(run_dir, "a", p.pid, ["true"])
    run_dir.clean()
    assert not pid_file.exists()


def test_unreadable_pid_file_is_removed(run_dir: RunDir) -> None:
    run_dir.nbd_dir.mkdir(parents=True)
    (run_dir.nbd_dir / "a.pid").write_text("garbage")
    run_dir.clean()
    assert not (run_dir.nbd_dir / "a.pid").exists()


def test_stale_sockets_and_links_are_removed_and_the_rest_kept(run_dir: RunDir) -> None:
    run_dir.nbd_dir.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(run_dir.nbd_dir / "0123.sock"))
    (run_dir.nbd_dir / "notes.txt").write_text("not ours")
    volume = run_dir.links_dir / "sd" / "img"
    volume.mkdir(parents=True)
    (volume / "vol").symlink_to("/dev/null")
    (volume / ".vol2.tmp").symlink_to("/dev/null")
    other = run_dir.links_dir / "sd2" / "img"
    other.mkdir(parents=True)
    (other / "vol").symlink_to("/nonexistent")
    (other / "file").write_text("not a link")
    done = run_dir.clean()
    assert (done.sockets, done.links) == (1, 3)
    assert not (run_dir.nbd_dir / "0123.sock").exists()
    assert (run_dir.nbd_dir / "notes.txt").exists()
    assert not (run_dir.links_dir / "sd").exists()
    assert (other / "file").exists() and not (other / "vol").is_symlink()


def test_clean_of_a_missing_directory_finds_nothing(run_dir: RunDir) -> None:
    assert run_dir.clean().processes == 0


def test_second_daemon_on_the_directory_is_refused(run_dir: RunDir) -> None:
    other = RunDir(run_dir.path)
    with pytest.raises(RunDirBusy):
        other.lock()
    run_dir.unlock()
    other.lock()
    other.unlock()


# spawn: children that die with the daemon.

CHILD_OF = textwrap.dedent(
    """
    import os, sys, threading
    from storage import spawn
    p = spawn.Spawner().popen(["sleep", "60"]) if sys.argv[1] == "spawner" else None
    if p is None:
        # Forked by a thread that ends at once.
        box = []
        t = threading.Thread(target=lambda: box.append(spawn.popen(["sleep", "60"])))
        t.start(); t.join()
        p = box[0]
    print(p.pid, flush=True)
    sys.stdin.read()  # until the test closes stdin or kills us
    """
)


def start_parent(how: str) -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_OF, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def test_child_dies_when_its_parent_is_killed() -> None:
    parent, child = start_parent("spawner")
    try:
        time.sleep(0.3)
        assert alive(child), "the spawner's child must live while the parent does"
        parent.kill()
        parent.wait(WAIT)
        assert wait_dead(child), "child outlived its parent killed with SIGKILL"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(WAIT)


def test_child_of_a_thread_that_ends_gets_the_signal_early() -> None:
    # Why the daemon forks from a long-lived thread: the kernel signals the
    # child when the forking *thread* exits, even if the process lives on.
    parent, child = start_parent("thread")
    try:
        assert wait_dead(child)
        assert parent.poll() is None
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(WAIT)


def test_spawner_child_outlives_the_thread_that_asked() -> None:
    box: list[subprocess.Popen[bytes]] = []
    spawner = spawn.Spawner()
    t = threading.Thread(target=lambda: box.append(spawner.popen(["sleep", "60"])))
    t.start()
    t.join()
    child = box[0]
    try:
        time.sleep(0.3)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(WAIT)


def test_child_of_a_dead_parent_kills_itself() -> None:
    # The parent died between fork and prctl: getppid() is not the parent.
    setup = spawn.die_with(parent=1)
    child = subprocess.Popen(["sleep", "60"], preexec_fn=setup)
    try:
        assert child.wait(WAIT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(WAIT)
