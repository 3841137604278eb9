"""What the kernel tells about a process and the page cache.

CPU time comes from /proc/<pid>/stat (utime + stime of every thread of the
process), peak memory from VmHWM in /proc/<pid>/status, which writing "5"
to /proc/<pid>/clear_refs resets so one case measures its own peak.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds the process has used so far."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds the process has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 of stat(5); fields[0] here is field 3.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS; False if the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PageCache:
    """Evicts image data before a run and measures what a run left behind."""

    def __init__(self) -> None:
        self.method = "drop_caches" if self._drop_all() else "fadvise"

    def drop(self, files: list[Path]) -> None:
        os.sync()
        if self.method == "drop_caches" and self._drop_all():
            return
        self.method = "fadvise"
        for path in files:
            evict(path)

    def describe(self) -> str:
        if self.method == "drop_caches":
            return "page cache dropped before each run (echo 3 > /proc/sys/vm/drop_caches)"
        return (
            "page cache: drop_caches not permitted; image files evicted with "
            "posix_fadvise(POSIX_FADV_DONTNEED) before each run"
        )

    @staticmethod
    def _drop_all() -> bool:
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError:
            return False
        return True


def evict(path: Path) -> None:
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float:
    """Fraction of the file's bytes in the page cache (fincore, util-linux)."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[0]) / size
