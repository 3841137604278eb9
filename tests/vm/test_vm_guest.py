"""The guest provides what the storage tests rely on."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_device_mapper_is_loaded() -> None:
    assert Path("/dev/mapper/control").exists()


def test_udevd_answers() -> None:
    subprocess.run(["udevadm", "control", "--ping"], check=True, timeout=10)


def test_sanlock_daemon_answers() -> None:
    out = subprocess.run(
        ["sanlock", "client", "status"], check=True, timeout=10, capture_output=True, text=True
    ).stdout
    assert out.startswith("daemon ")
