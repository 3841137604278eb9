"""``bench.run --before DIR``: an earlier checkout's daemon takes its turn
in every case, beside ours and ovirt-imageio (not a benchmark).

The checkout here is this tree's own HEAD, exported with ``git archive``,
with a marker added to its package: the marker proves that the third
daemon ran the checkout's code, not the virtual environment's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tests" / "compat" / "setup-ovirt-imageio.sh"
CASE = "upload-tls-curl"
MARKER = "imported-by-before-daemon"


def _checkout(tmp_path: Path) -> Path:
    where = tmp_path / "before"
    where.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD", "vdsm_imageio"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True, timeout=60)
    init = where / "vdsm_imageio" / "__init__.py"
    init.write_text(
        init.read_text()
        + f"\nimport pathlib as _p\n(_p.Path(__file__).parents[1] / {MARKER!r}).touch()\n"
    )
    return where


def test_before_daemon_runs_the_checkout_in_every_case(tmp_path: Path) -> None:
    setup = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    if setup.returncode != 0:
        pytest.fail(f"{SETUP.name} failed:\n{setup.stdout}{setup.stderr}")
    before = _checkout(tmp_path)
    images = ROOT / ".cache" / "bench-before"
    env = dict(
        os.environ,
        BENCH_PROFILES="disk",
        BENCH_SIZE="16M",
        BENCH_RUNS="1",
        BENCH_CASES=CASE,
        BENCH_DIR=str(images),
        BENCH_RESULTS=str(tmp_path / "results"),
        BENCH_BEFORE=str(before),
    )
    env.pop("BENCH_BUFFER_SIZE", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "upload tls curl [before]" in done.stdout, done.stdout
    assert (before / MARKER).exists(), "the third daemon imported the checkout's package"
    [result] = (tmp_path / "results").glob("bench-*-disk-16M.json")
    doc = json.loads(result.read_text())
    assert str(before) in doc["daemons"]["before"]["label"]
    [case] = doc["cases"]
    entry = case["metrics"][0]["before"]
    assert entry["status"] == "ok" and entry["median"] > 0, entry
    assert entry["cpu_s_per_gib"] is not None
