"""Running ``vdsm-imageio upload|download|checksum`` as a user does: a real
process of the installed command, against a real daemon.

Also images with holes made by qemu-img and qemu-io, and their comparison
with ``qemu-img compare`` (guest data, whatever the formats).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / ".venv" / "bin" / "vdsm-imageio"
RUN_TIMEOUT = 180.0
CMD_TIMEOUT = 60.0
KiB = 1024
MiB = 1024**2


def client_argv(*args: str | Path) -> list[str]:
    return [str(CLIENT), *(str(a) for a in args)]


def run_client(*args: str | Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_client(*args: str | Path) -> subprocess.Popen[str]:
    """A client in its own process group, JSON progress on its stdout."""
    return subprocess.Popen(
        client_argv(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[str], signo: int = signal.SIGKILL) -> tuple[str, str]:
    """Signal the client (and wait for it); its output."""
    if proc.poll() is None:
        proc.send_signal(signo)
    try:
        out, err = proc.communicate(timeout=CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return out, err


def progress_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run(*argv: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, timeout=CMD_TIMEOUT
    ).stdout


def write_runs(path: Path, size: int, runs: list[tuple[int, int]], seed: int) -> None:
    """A raw file of size bytes: random data in runs, holes elsewhere."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in runs:
            f.seek(offset)
            for pos in range(0, length, 8 * MiB):
                f.write(rng.randbytes(min(8 * MiB, length - pos)))


def qcow2_with_runs(
    path: Path, size: int, runs: list[tuple[int, int]], *, backing: Path | None = None
) -> None:
    """A qcow2 (on an optional raw backing file) with a pattern in each run."""
    argv: list[str | Path] = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", backing, "-F", "raw"]
    run(*argv, path, str(size))
    for i, (offset, length) in enumerate(runs):
        run("qemu-io", "-f", "qcow2", "-c", f"write -P {i + 1} {offset} {length}", path)


def virtual_size(path: Path) -> int:
    return int(json.loads(run("qemu-img", "info", "-U", "--output=json", path))["virtual-size"])


def same_guest_data(a: Path, b: Path) -> bool:
    """qemu-img compare, and the same virtual size (compare alone takes a
    longer image whose tail reads as zeros for equal)."""
    if virtual_size(a) != virtual_size(b):
        return False
    done = subprocess.run(
        ["qemu-img", "compare", "-U", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        check=False,
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"qemu-img compare failed: {done.stderr}")
    return done.returncode == 0


def allocated(path: Path) -> int:
    """Bytes the file system holds for the file."""
    return os.stat(path).st_blocks * 512


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
