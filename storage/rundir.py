"""The run directory: one daemon at a time, and what a dead one left.

A daemon killed with SIGKILL cannot tear down. Its qemu-nbd servers die
with it (``storage.spawn``) unless they cannot take the signal; its
sockets, pid files and volume links stay. Before the next daemon on the
same run directory serves anything, it:

1. takes ``<run_dir>/lock`` (flock, held until the process ends, however
   it ends: the kernel drops it), so the clean-up below never runs under a
   live daemon; a second daemon on the directory fails to start;
2. stops the qemu-nbd servers recorded in ``nbd/*.pid`` that still run
   the recorded command line since the recorded start time
   (``storage.pidfiles``): SIGTERM (and SIGCONT, for a stopped one), then
   SIGKILL. A pid now running anything else is left alone. Signals go
   through a pidfd, so the process checked is the process signalled;
3. removes the sockets and pid files under ``nbd/`` and the links under
   ``storage/`` with the directories they leave empty. Nothing else is
   removed: the run directory may hold files that are not ours.

Every removal is logged (``CLEANUP``), with a summary line.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from . import pidfiles

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0


class RunDirBusy(OSError):
    """Another live daemon holds the run directory."""


@dataclass
class Cleaned:
    processes: int = 0
    left: int = 0
    sockets: int = 0
    links: int = 0


class RunDir:
    def __init__(self, path: Path, *, stop_timeout: float = STOP_TIMEOUT) -> None:
        self.path = path
        self._stop_timeout = stop_timeout
        self._lock_fd: int | None = None

    @property
    def nbd_dir(self) -> Path:
        return self.path / "nbd"

    @property
    def links_dir(self) -> Path:
        return self.path / "storage"

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirBusy(
                    errno.EBUSY, "another vdsm-imageio uses the run directory", str(self.path)
                ) from None
            raise
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)

    def clean(self) -> Cleaned:
        """Remove what a previous daemon left; call with the lock held."""
        assert self._lock_fd is not None, "clean() without the lock"
        done = Cleaned()
        self._stop_servers(done)
        self._remove_sockets(done)
        self._remove_links(done)
        log.info(
            "CLEANUP done run_dir=%s processes=%d left_alone=%d sockets=%d links=%d",
            self.path,
            done.processes,
            done.left,
            done.sockets,
            done.links,
        )
        return done

    # qemu-nbd servers.

    def _stop_servers(self, done: Cleaned) -> None:
        for pid_file in sorted(_entries(self.nbd_dir)):
            if not pid_file.name.endswith(".pid") or pid_file.name.startswith("."):
                continue
            record = pidfiles.read(pid_file)
            if record is None:
                log.warning("CLEANUP unreadable pid file path=%s", pid_file)
            else:
                self._stop_server(record, pid_file, done)
            pid_file.unlink(missing_ok=True)

    def _stop_server(self, record: pidfiles.PidRecord, pid_file: Path, done: Cleaned) -> None:
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            log.info("CLEANUP pid file of an exited process path=%s pid=%d", pid_file, record.pid)
            return
        try:
            cmdline, start, state = pidfiles.process_state(record.pid)
            if state in (None, "Z", "X"):
                log.info(
                    "CLEANUP pid file of an exited process path=%s pid=%d", pid_file, record.pid
                )
                return
            if not pidfiles.same_process(record, cmdline, start):
                shown = (cmdline or b"").replace(b"\0", b" ").strip()[:200]
                log.info(
                    "CLEANUP left alone pid=%d path=%s reason=runs another program cmdline=%r",
                    record.pid,
                    pid_file,
                    shown.decode(errors="replace"),
                )
                done.left += 1
                return
            how = self._terminate(pidfd)
            if how is None:
                log.error(
                    "CLEANUP could not stop a previous instance's server pid=%d path=%s "
                    "reason=survived SIGKILL for %.1fs",
                    record.pid,
                    pid_file,
                    self._stop_timeout,
                )
                done.left += 1
                return
            log.warning(
                "CLEANUP stopped a previous instance's server pid=%d path=%s how=%s argv=%s",
                record.pid,
                pid_file,
                how,
                list(record.argv),
            )
            done.processes += 1
        finally:
            os.close(pidfd)

    def _terminate(self, pidfd: int) -> str | None:
        """How the process ended; None if it did not."""
        for signo in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(pidfd, signo)
                if signo == signal.SIGTERM:
                    # A stopped process keeps SIGTERM pending until continued.
                    signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            except ProcessLookupError:
                return "exited"
            if _exited(pidfd, self._stop_timeout):
                return signal.Signals(signo).name
        return None

    # Files.

    def _remove_sockets(self, done: Cleaned) -> None:
        for path in _entries(self.nbd_dir):
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISSOCK(mode):
                path.unlink(missing_ok=True)
                log.info("CLEANUP removed stale socket path=%s", path)
                done.sockets += 1
            elif path.name.startswith(".") and path.name.endswith(".pid.tmp"):
                # A pid file cut off while written (storage.pidfiles).
                path.unlink(missing_ok=True)

    def _remove_links(self, done: Cleaned) -> None:
        root = self.links_dir
        if not root.is_dir() or root.is_symlink():
            return
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            here = Path(dirpath)
            for name in filenames + dirnames:
                path = here / name
                if path.is_symlink():
                    target = os.readlink(path)
                    path.unlink()
                    log.info("CLEANUP removed stale link path=%s target=%s", path, target)
                    done.links += 1
            if here != root:
                try:
                    here.rmdir()
                except OSError:
                    pass  # not empty: something that is not ours


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def _exited(pidfd: int, timeout: float) -> bool:
    # A pidfd polls readable once the process has exited (pidfd_open(2)).
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))
