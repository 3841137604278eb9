"""The compatibility lane: ovirt-imageio 2.5.1 in a virtual environment of
its own, which setup-ovirt-imageio.sh creates once and reuses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "tests" / "compat" / "setup-ovirt-imageio.sh"
REF_VENV = ROOT / ".cache" / "ovirt-imageio-venv"


@pytest.fixture(scope="session")
def reference_venv() -> Path:
    """ovirt-imageio 2.5.1's virtual environment; the lane fails without it."""
    result = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        pytest.fail(f"{SETUP.name} failed:\n{result.stdout}{result.stderr}")
    return REF_VENV


@pytest.fixture(scope="session")
def client_python(reference_venv: Path) -> Path:
    """The python that runs ovirt-imageio's client library."""
    return reference_venv / "bin" / "python"
