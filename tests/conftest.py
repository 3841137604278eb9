"""Suite-wide collection rules."""

from __future__ import annotations

import os

import pytest

# tests/vm needs device-mapper, sanlock and udevd: it runs inside the VM
# lane's guest (tests/vm/runner.py, driven by tests/test_vm_lane.py).
collect_ignore = [] if os.environ.get("VDSM_IMAGEIO_VM") == "1" else ["vm"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: boots the VM lane guest (slow)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # The guest's own summary line, also when the host-side test passed.
    for key in ("passed", "failed"):
        for report in terminalreporter.stats.get(key, []):
            for name, value in getattr(report, "user_properties", []):
                if name == "vm_lane_guest":
                    terminalreporter.write_line(f"VM lane guest: {value}")
