"""The ``make bench`` harness still runs end to end (not a benchmark).

A tiny image, one run, a few cases against both real daemons (ours and
ovirt-imageio 2.5.1 from its own virtual environment): the table is
printed and the JSON written, with a number for each daemon. No timing is
asserted beyond the harness finishing in its budget.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.compat, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tests" / "compat" / "setup-ovirt-imageio.sh"
CASES = ["download-unix-curl", "upload-tls-curl", "download-unix-client", "ticket-latency"]
METRICS = [
    "download unix curl",
    "page cache after download",
    "upload tls curl",
    "download unix client 4 workers",
    "ticket add+remove over the control socket (median)",
]
BUDGET = 60.0


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


def _run_bench(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    results = tmp_path / "results"
    env = dict(
        os.environ,
        BENCH_SIZE="16M",
        BENCH_RUNS="1",
        BENCH_CASES=",".join(CASES),
        BENCH_DIR=str(_not_tmpfs(tmp_path) / "bench"),
        BENCH_RESULTS=str(results),
        BENCH_RANDOM_SECONDS="1",
        BENCH_LATENCY_COUNT="10",
    )
    # Its own session, so a harness that overruns is stopped with every
    # daemon and client it started.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=BUDGET)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench smoke took more than {BUDGET}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), results


def test_bench_prints_table_and_writes_json_for_both_daemons(
    reference_installed: None, tmp_path: Path
) -> None:
    done, results = _run_bench(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = {}
    for line in done.stdout.splitlines():
        for name in METRICS:
            if line.startswith(name + " "):
                rows[name] = line
    assert set(rows) == set(METRICS), done.stdout
    number = r"\s+\d+(\.\d+)?"
    for line in rows.values():
        cells = line[54:]
        assert re.match(r"\s*\S+" + number + number, cells), line
    for ref in (
        "python unix socket loopback",
        "python TLS loopback",
        "dd O_DIRECT read",
        "dd O_DIRECT write (fsync)",
        "curl upload to a discarding unix server",
    ):
        assert re.search(re.escape(ref) + number + " MiB/s", done.stdout), ref

    files = list(results.glob("bench-*-16M.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert [c["id"] for c in doc["cases"]] == CASES
    for case in doc["cases"]:
        for metric in case["metrics"]:
            for side in ("ours", "theirs"):
                entry = metric[side]
                assert entry["status"] == "ok", (case["id"], side, entry)
                assert len(entry["runs"]) == 1
                if metric["unit"] != "%":
                    assert entry["median"] > 0, (case["id"], side, entry)
    assert all(v > 0 for v in doc["physical"].values())
    assert doc["targets"], "the issue's targets are checked"


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
