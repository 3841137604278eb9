"""Pid files that name a process beyond doubt.

A pid alone is not a process: after a crash and a reboot, or just a long
time, the pid in a stale file may belong to anything, and killing it would
be a disaster. A record therefore holds the pid, the argv we started and
the process's start time (field 22 of /proc/PID/stat, in clock ticks since
boot); a live process is the one recorded only if its /proc/PID/cmdline is
that argv and its start time that start time.

Records are JSON, written to a temporary name and renamed, so a crash
never leaves half a record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidRecord:
    pid: int
    argv: tuple[str, ...]
    start_time: int | None

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "argv": list(self.argv), "start_time": self.start_time})


def parse(text: str) -> PidRecord | None:
    """The record in text, None if it is not one of ours."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    pid, argv, start = obj.get("pid"), obj.get("argv"), obj.get("start_time")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        return None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return None
    if start is not None and (isinstance(start, bool) or not isinstance(start, int)):
        return None
    return PidRecord(pid, tuple(argv), start)


def same_process(record: PidRecord, cmdline: bytes | None, start_time: int | None) -> bool:
    """Whether a process with this cmdline and start time is the recorded one."""
    if cmdline is None:
        return False
    if cmdline != b"".join(os.fsencode(a) + b"\0" for a in record.argv):
        return False
    return record.start_time is None or record.start_time == start_time


def parse_start_time(stat: str) -> int | None:
    """Field 22 of /proc/PID/stat; the command name (field 2) may hold anything."""
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state).
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


# I/O.


def process_state(pid: int) -> tuple[bytes | None, int | None, str | None]:
    """cmdline, start time and state letter of pid; Nones if it is gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None, None, None
    fields = stat.rpartition(")")[2].split()
    return cmdline, parse_start_time(stat), fields[0] if fields else None


def record_of(pid: int, argv: list[str]) -> PidRecord:
    return PidRecord(pid, tuple(argv), process_state(pid)[1])


def write(path: Path, record: PidRecord) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w") as f:
        f.write(record.to_json())
    os.replace(tmp, path)


def read(path: Path) -> PidRecord | None:
    try:
        return parse(path.read_text(errors="replace"))
    except FileNotFoundError:
        return None


def is_running(record: PidRecord) -> bool:
    """Whether the recorded process still runs (a zombie has exited)."""
    cmdline, start, state = process_state(record.pid)
    return state not in (None, "Z", "X") and same_process(record, cmdline, start)
