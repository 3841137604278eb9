"""The proxy rows of ``make bench`` still run end to end (not a benchmark).

A tiny image, one run: both proxies and host daemons start in their two
network namespaces, every row gets a number for each side, the JSON is
written, and nothing of the rig is left (namespaces, the fast file system,
daemons). No timing is asserted beyond the run finishing in its budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import profiles, proxybench, twohosts

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(900),
    pytest.mark.skipif(twohosts.available() is not None, reason=str(twohosts.available())),
]

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tests" / "compat" / "setup-ovirt-imageio.sh"
BUDGET = 300.0


def _leftovers(pid: int) -> list[str]:
    """What the bench process pid left behind: its namespaces and its fast
    storage (twohosts and profiles name them by pid). Only its own: other
    benches and tests on the machine may hold theirs meanwhile."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    found = [n for n in names if n.startswith((f"vdsm-proxy-{pid}-", f"vdsm-host-{pid}-"))]
    backing = profiles.SHM / f"vdsm-bench-fast-{pid}.img"
    if backing.exists():
        found.append(str(backing))
    loops = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
    )
    # A mounted file system keeps its loop device: this covers the mount too.
    found += [line for line in loops.stdout.splitlines() if backing.name in line]
    return found


def _not_tmpfs(path: Path) -> Path:
    out = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    )
    if out.stdout.strip() != "tmpfs":
        return path
    base = ROOT / ".cache" / "bench-smoke"
    base.mkdir(parents=True, exist_ok=True)
    return base


def test_proxy_rows_run_end_to_end(tmp_path: Path) -> None:
    setup = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    if setup.returncode != 0:
        pytest.fail(f"{SETUP.name} failed:\n{setup.stdout}{setup.stderr}")
    argv = [
        sys.executable,
        "-m",
        "bench.proxybench",
        "--size",
        "16M",
        "--runs",
        "1",
        "--dir",
        str(_not_tmpfs(tmp_path) / "bench"),
        "--results",
        str(tmp_path / "results"),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=BUDGET)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the proxy bench overran {BUDGET:g} s:\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    assert "== proxy mode" in out and "targets (issue 13)" in out
    (path,) = (tmp_path / "results").glob("bench-*-proxy-16M.json")
    doc = json.loads(path.read_text())
    assert [r["case"] for r in doc["rows"]] == proxybench.CASES
    for row in doc["rows"]:
        assert row["failed"] == {}, row
        assert set(row["rates"]) == set(proxybench.SIDES)
        assert all(v > 0 for values in row["rates"].values() for v in values)
    assert set(doc["memory"]["peak_mib"]) == {"ours", "theirs"}
    assert _leftovers(proc.pid) == []
