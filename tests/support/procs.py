"""Processes found in /proc, for tests that check what a daemon left running."""

from __future__ import annotations

from pathlib import Path


def running(program: bytes) -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every process whose argv[0] ends with program.

    A zombie's cmdline is empty, so a process that exited counts as gone
    even before its parent reaps it.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # it just exited
        if argv[0].endswith(program):
            found.append((int(entry.name), argv))
    return found


def qemu_nbd_pids(root: Path) -> list[int]:
    """Pids of the qemu-nbd processes serving sockets under root's run dir
    (root: a daemon's --local directory)."""
    needle = f"--socket={root / 'run' / 'nbd'}/".encode()
    return [pid for pid, argv in running(b"qemu-nbd") if any(a.startswith(needle) for a in argv)]


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (proc(5): field 10 of stat)."""
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    # The command name, in parentheses, may hold spaces.
    return int(stat.rpartition(")")[2].split()[7])
