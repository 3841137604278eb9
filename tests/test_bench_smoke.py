"""The ``make bench`` harness still runs end to end (not a benchmark).

A tiny image, one run, a few cases against the real daemons (ours,
ovirt-imageio 2.5.1 from its own virtual environment, and ours without the
hand-written NBD reader) on both storage profiles: the tables are printed
and one JSON per profile written, with a number for each daemon; the fast
profile's file system, loop device and backing file are gone afterwards,
also when the bench is stopped in the middle of a case. No timing is
asserted beyond the harness finishing in its budget.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tests" / "compat" / "setup-ovirt-imageio.sh"
CASES = [
    "download-unix-curl",
    "upload-tls-curl",
    "download-unix-client",
    "nbd-download-unix-curl",
    "ticket-latency",
]
METRICS = [
    "download unix curl",
    "page cache after download",
    "upload tls curl",
    "download unix client 4 workers",
    "nbd download unix curl",
    "nbd download unix curl [ours-libnbd]",
    "ticket add+remove over the control socket (median)",
]
PROFILES = ["disk", "fast"]
REFERENCES = [
    "python unix socket loopback",
    "python TLS loopback",
    "dd O_DIRECT read",
    "dd O_DIRECT write (fsync)",
    "curl upload to a discarding unix server",
]
# Two profiles of five tiny cases, on a machine that may be busy.
BUDGET = 180.0


def _not_tmpfs(path: Path) -> Path:
    """Images need O_DIRECT, which tmpfs lacks."""
    out = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    )
    if out.stdout.strip() != "tmpfs":
        return path
    base = ROOT / ".cache" / "bench-smoke"
    base.mkdir(parents=True, exist_ok=True)
    return base


@pytest.fixture(scope="module")
def reference_installed() -> None:
    result = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.fail(f"{SETUP.name} failed:\n{result.stdout}{result.stderr}")


def _bench_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        BENCH_SIZE="16M",
        BENCH_PROXY_SIZE="16M",
        BENCH_RUNS="1",
        BENCH_CASES=",".join(CASES),
        BENCH_DIR=str(_not_tmpfs(tmp_path) / "bench"),
        BENCH_RESULTS=str(tmp_path / "results"),
        BENCH_RANDOM_SECONDS="1",
        BENCH_LATENCY_COUNT="10",
    )
    env.pop("BENCH_PROFILES", None)
    env.pop("BENCH_BUFFER_SIZE", None)
    return env | extra


def _start_bench(env: dict[str, str]) -> subprocess.Popen[str]:
    # Its own session, so a harness that overruns is stopped with every
    # daemon and client it started.
    return subprocess.Popen(
        [sys.executable, "-m", "bench.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _run_bench(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    proc = _start_bench(_bench_env(tmp_path))
    try:
        out, err = proc.communicate(timeout=BUDGET)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench smoke took more than {BUDGET}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), tmp_path / "results"


def _profile_table(stdout: str, profile: str) -> list[str]:
    """The lines of one profile's section of the output."""
    section = stdout.split(f"== profile {profile}:", 1)[1].split("\n== ", 1)[0]
    return section.splitlines()


def test_bench_runs_both_profiles_prints_tables_and_writes_json(
    reference_installed: None, tmp_path: Path
) -> None:
    done, results = _run_bench(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    number = r"\s+\d+(\.\d+)?"
    for profile in PROFILES:
        lines = _profile_table(done.stdout, profile)
        rows = {}
        for line in lines:
            for name in METRICS:
                if line.startswith(name + " "):
                    rows[name] = line
        assert set(rows) == set(METRICS), (profile, done.stdout)
        for line in rows.values():
            cells = line[54:]
            assert re.match(r"\s*\S+" + number + number, cells), line
        section = "\n".join(lines)
        for ref in REFERENCES:
            assert re.search(re.escape(ref) + number + " MiB/s", section), (profile, ref)
        assert re.search(r"nbdwire vs libnbd alone .*: throughput \d", section), section
        assert re.search(rf"elapsed \({profile}\): \d+ s", section), section
    # Every row once more, on both profiles side by side.
    summary = done.stdout.split("== every row on both profiles", 1)[1]
    assert "nbd download unix curl [ours-libnbd]" in summary
    assert re.search(r"elapsed: disk \d+ s, fast \d+ s; whole run \d+ s", summary), summary

    files = {json.loads(p.read_text())["profile"]: p for p in results.glob("bench-*-16M.json")}
    assert set(files) == set(PROFILES), files
    for profile, path in files.items():
        assert path.name.endswith(f"-{profile}-16M.json")
        doc = json.loads(path.read_text())
        assert doc["schema"] == 1
        assert [c["id"] for c in doc["cases"]] == CASES
        for case in doc["cases"]:
            for metric in case["metrics"]:
                sides = ["ours", "theirs"]
                if case["id"] == "nbd-download-unix-curl":
                    sides.append("ours-libnbd")
                for side in sides:
                    entry = metric[side]
                    assert entry["status"] == "ok", (profile, case["id"], side, entry)
                    assert len(entry["runs"]) == 1
                    if metric["unit"] != "%":
                        assert entry["median"] > 0, (profile, case["id"], side, entry)
        assert all(v > 0 for v in doc["physical"].values())
        assert doc["targets"], "the issue's targets are checked"
        assert doc["nbdwire"]["throughput_ratio"] > 0
        assert doc["host"]["cpus"] == os.cpu_count()
        assert len(doc["host"]["load_start"]) == len(doc["host"]["load_end"]) == 3
        # Shipped defaults: nothing tuned, each daemon's own buffer recorded.
        assert doc["config"]["tuned_buffer_size"] is None
        assert doc["daemons"]["ours"]["settings"]["http.buffer_size"] > 0
        assert doc["daemons"]["theirs"]["settings"]["backend_file.buffer_size"] > 0
        assert doc["daemons"]["ours-libnbd"]["settings"]["http.nbd_splice"] is False

    fast = json.loads(files["fast"].read_text())["storage"]
    assert fast["fstype"] == "ext4" and fast["backing"].startswith("/dev/shm/")
    assert f"backing={fast['backing']}" in done.stderr
    assert _fast_leftovers(done.stderr) == []
    # Results of two runs compare.
    out = subprocess.run(
        [sys.executable, "-m", "bench.compare", str(files["disk"]), str(files["fast"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "profile differs: disk -> fast" in out.stdout
    assert re.search(r"download unix curl .*\d\.\d\dx", out.stdout), out.stdout


def _mounted(path: str) -> bool:
    return any(line.split()[1] == path for line in Path("/proc/mounts").read_text().splitlines())


def _bound_loop_devices(backing: str) -> list[str]:
    found = []
    for sysfs in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            bound = sysfs.read_text().strip()
        except OSError:
            continue
        if bound.removesuffix(" (deleted)") == backing:
            found.append(f"/dev/{sysfs.parts[3]}")
    return found


def _fast_leftovers(log: str) -> list[str]:
    """What the fast profile named in its "FAST mounted" log line and left
    behind; removed here, so a failing test leaves nothing either."""
    found = re.search(r"FAST mounted device=\S+ mount=(\S+) backing=(\S+)", log)
    assert found, log[-3000:]
    mount, backing = found.groups()
    left = []
    if _mounted(mount):
        left.append(f"mount {mount}")
        subprocess.run(["umount", "--lazy", mount], check=False, timeout=60)
    if Path(mount).exists():
        left.append(f"mount point {mount}")
        Path(mount).rmdir()
    for device in _bound_loop_devices(backing):
        left.append(f"loop device {device}")
        subprocess.run(["losetup", "--detach", device], check=False, timeout=60)
    if Path(backing).exists():
        left.append(f"backing file {backing}")
        Path(backing).unlink()
    return left


def _session_leftovers(sid: int) -> list[str]:
    """Processes still in the bench's session (daemons, qemu-nbd, clients);
    killed here."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # fields[0] is stat(5)'s field 3 (state); the session id is field 6.
        if int(fields[3]) == sid and fields[0] != "Z":
            left.append(text[: text.rindex(")") + 1])
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGKILL)
        time.sleep(1)
    return left


@pytest.mark.parametrize(
    "signo, to_group, status",
    [
        # Ctrl-C: the terminal signals the whole foreground process group.
        (signal.SIGINT, True, 130),
        # kill PID: the bench alone, which must stop what it started.
        (signal.SIGTERM, False, 128 + signal.SIGTERM),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_bench_stopped_in_the_fast_profile_leaves_nothing_behind(
    reference_installed: None, tmp_path: Path, signo: int, to_group: bool, status: int
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the fast profile needs root for loop devices and mounts")
    # Long enough that the signal lands while a case runs on the fast file system.
    env = _bench_env(
        tmp_path, BENCH_PROFILES="fast", BENCH_CASES="ticket-latency", BENCH_LATENCY_COUNT="100000"
    )
    proc = _start_bench(env)
    lines: queue.Queue[str] = queue.Queue()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + BUDGET
    try:
        while not any("RUN case=ticket-latency" in line for line in seen):
            assert proc.poll() is None, "".join(seen)[-3000:]
            assert time.monotonic() < deadline, "".join(seen)[-3000:]
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        if to_group:
            os.killpg(proc.pid, signo)
        else:
            proc.send_signal(signo)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Daemons and qemu-nbd must have gone with the bench (first, as
        # they hold files on the fast file system).
        processes = _session_leftovers(proc.pid)
    reader.join(10)
    while not lines.empty():
        seen.append(lines.get())
    log = "".join(seen)
    storage = _fast_leftovers(log)
    # The client-side files (imagesmod.Scratch) on /dev/shm.
    scratch = Path("/dev/shm") / f"vdsm-bench-{proc.pid}"
    if scratch.exists():
        storage.append(f"scratch {scratch}")
        shutil.rmtree(scratch)
    assert processes == [], log[-3000:]
    assert storage == [], log[-3000:]
    assert proc.returncode == status, log[-3000:]
    assert "FAST removed" in log, log[-3000:]


def test_fast_profile_is_skipped_with_its_reason_where_shm_is_too_small(
    reference_installed: None, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "shm"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        proc = _start_bench(_bench_env(tmp_path, BENCH_PROFILES="fast", BENCH_SHM=str(small)))
        out, err = proc.communicate(timeout=BUDGET)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert proc.returncode == 0, err[-3000:]
    assert re.search(rf"profile fast skipped: {re.escape(str(small))} has \d+ MiB free", out), out
    assert "FAST mounted" not in err
    (path,) = (tmp_path / "results").glob("bench-*-fast-16M.json")
    doc = json.loads(path.read_text())
    assert doc["profile"] == "fast" and "MiB free" in doc["skipped"]
    assert "cases" not in doc


def test_bench_lists_its_cases() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ids = out.stdout.split()
    assert set(CASES) <= set(ids)
    assert "peak-rss" in ids and "nbd-download-unix-curl" in ids
