"""The VM lane: tests/vm run inside one virtme-ng guest (see tests/vm/runner.py).

This host-side test boots the guest and carries its result into the host's
pytest summary. A guest that does not boot is a failure, never a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).parent / "vm" / "runner.py"
RUNNER_LOG = Path(".cache") / "vm-lane.log"
# Boot (~30 s in software emulation) plus the guest suite; the runner
# enforces this limit itself and stops the guest.
# A quiet 2-core machine takes about 6.5 min; a loaded one over 11 min.
GUEST_TIMEOUT = 1200
SUMMARY_RE = re.compile(
    r"^=*\s*(\d+ (?:passed|failed|error|skipped).* in [\d.]+s\b.*?)"
    r"\s*=*$",
    re.M,
)


@pytest.mark.vm
@pytest.mark.timeout(GUEST_TIMEOUT + 120)
def test_vm_lane_guest_suite_passes(record_property: Callable[[str, Any], None]) -> None:
    env = dict(os.environ, VDSM_IMAGEIO_VM_TIMEOUT=str(GUEST_TIMEOUT))
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "-ra"],
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=GUEST_TIMEOUT + 60,
        check=False,
    )
    out = proc.stdout + proc.stderr
    summaries = SUMMARY_RE.findall(out)
    summary = summaries[-1] if summaries else "no pytest summary"
    record_property("vm_lane_guest", summary)
    lines = out.splitlines()
    # The guest's failures first (its -ra summary), then the end of its output.
    failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    tail = "\n".join([*failures, "...", *lines[-80:], f"(full log: {RUNNER_LOG})"])
    assert "VM-LANE-EXIT" in out, f"VM lane guest failed to boot:\n{tail}"
    assert proc.returncode == 0, f"VM lane guest suite failed ({summary}):\n{tail}"
    assert summaries, f"no pytest summary from the guest:\n{tail}"
