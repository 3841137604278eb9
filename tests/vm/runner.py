"""Run tests/vm inside one throwaway guest (the VM lane).

The host kernel has no device-mapper and cannot run the sanlock daemon,
so LVM, device-mapper, sanlock and systemd-udevd are tested in a guest:
Debian's distribution kernel booted by virtme-ng under qemu in software
emulation, with the host file system shared read-only as the guest's root
(the guest writes to its own tmpfs-backed /tmp, /run and /var).

    python tests/vm/runner.py [PYTEST-ARGS...]     # on the host

boots the guest, which runs guest.sh: that half loads dm_mod and loop,
starts systemd-udevd and the sanlock daemon, runs ``pytest tests/vm`` with
``VDSM_IMAGEIO_VM=1`` and prints one marker line ``VM-LANE-EXIT rc=N``.
The host half streams the guest's output and exits with the guest's
pytest exit code; without the marker the guest did not
boot or did not finish, which exits with BOOT_FAILED.

Environment: VDSM_IMAGEIO_VM_KERNEL picks the kernel (default: the newest
/boot/vmlinuz-* whose modules are installed), VDSM_IMAGEIO_VM_TIMEOUT the
limit in seconds for the whole guest session (default 1200).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = Path(__file__).resolve().with_name("guest.sh")
# The whole guest console of the last run, for a failure's details.
LOG = REPO / ".cache" / "vm-lane.log"
MARKER = "VM-LANE-EXIT"
MARKER_RE = re.compile(rf"^{MARKER} rc=(\d+)$", re.M)
# Distinct from pytest's exit codes 0-5.
BOOT_FAILED = 100
TIMED_OUT = 102
MEMORY = "2G"
CPUS = "2"


# Host side.


def find_kernel() -> Path:
    override = os.environ.get("VDSM_IMAGEIO_VM_KERNEL")
    if override:
        return Path(override)
    found = []
    for image in Path("/boot").glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        # virtme-ng shares the host's /lib/modules: the guest needs dm_mod.
        if Path("/lib/modules", release, "modules.dep").exists():
            found.append((_version_key(release), image))
    if not found:
        raise SystemExit(
            "no /boot/vmlinuz-* with modules installed; "
            "install the Debian package linux-image-amd64"
        )
    return max(found)[1]


def _version_key(release: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", release)]


def vng_command(kernel: Path, pytest_args: list[str]) -> list[str]:
    guest = ["sh", str(GUEST), sys.executable, *pytest_args]
    return [
        str(Path(sys.executable).parent / "vng"),
        "--run",
        str(kernel),
        "--disable-kvm",  # KVM does not work on the hosts we run on.
        "--memory",
        MEMORY,
        "--cpus",
        CPUS,
        "--user",
        "root",
        "--cwd",
        str(REPO),
        "--exec",
        shlex.join(guest),
    ]


def run_host(pytest_args: list[str]) -> int:
    timeout = float(os.environ.get("VDSM_IMAGEIO_VM_TIMEOUT", "1200"))
    kernel = find_kernel()
    cmd = vng_command(kernel, pytest_args)
    env = dict(os.environ)
    # vng runs virtme-run from PATH; both live in the virtual environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    print(f"VM lane: booting {kernel} (software emulation)", flush=True)
    start = time.monotonic()
    # Own session: on timeout we stop vng and the qemu it started, by group.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    # A silent, hung guest never ends the output stream: a timer stops it.
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _stop(proc)

    timer = threading.Timer(timeout, expire)
    timer.start()
    output: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        proc.wait()
    finally:
        timer.cancel()
        _stop(proc)
    if expired.is_set():
        print(f"VM lane: guest still running after {timeout:.0f}s, stopped it", flush=True)
        return TIMED_OUT
    LOG.parent.mkdir(parents=True, exist_ok=True)
    LOG.write_text("".join(output))
    marker = MARKER_RE.search("".join(output))
    elapsed = time.monotonic() - start
    if marker is None:
        print(
            f"VM lane: guest failed to boot or to finish (vng exit "
            f"{proc.returncode}, {elapsed:.0f}s)",
            flush=True,
        )
        return BOOT_FAILED
    print(f"VM lane: guest finished in {elapsed:.0f}s", flush=True)
    return int(marker.group(1))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()


def main() -> int:
    return run_host(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
