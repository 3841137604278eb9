"""One qemu-nbd server per volume, on a unix socket.

Lifecycle: created -> started (serving, pid known) -> stopped. ``start``
either leaves a server that accepts connections or raises VolumeError with
qemu-nbd's stderr and leaves nothing running; ``stop`` always ends with the
process reaped and the socket gone, escalating from SIGTERM to SIGKILL (a
read-only server, which has nothing to write back, gets SIGKILL at once).

The server dies with the daemon (``storage.spawn``); with a ``pid_file``
it is recorded there while it runs, so that a daemon that could not stop
it (SIGKILL) has it stopped by the next one (``storage.rundir``).

The server is shared by every connection of every ticket on the volume
(``--shared``) and outlives its clients (``--persistent``). Writes bypass
the host page cache (``--cache=none``) for the same reason the file backend
uses O_DIRECT: the volume is on shared storage. File systems that refuse
O_DIRECT get qemu's default writeback cache instead of a failed start.

qemu-nbd takes a new buffer from malloc for every read and write request.
glibc maps requests of 128 KiB and more with mmap, and its sliding
threshold never catches up with qemu's aligned allocations, so every
request faults in and zeroes fresh pages and unmaps them again: on a read
of a qcow2 on tmpfs that was a third of qemu-nbd's CPU time.
``reuse_buffers`` keeps such buffers in the heap (``GLIBC_TUNABLES``), where
the next request reuses them; the heap then holds what the requests in
flight held at their peak. The transfer client's short-lived server takes
it; the daemon's long-lived, shared servers keep glibc's defaults.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import nbd

from vdsm_imageio import directio
from vdsm_imageio.errors import VolumeError

from . import pidfiles, spawn

log = logging.getLogger(__name__)

FORMATS = ("raw", "qcow2")
# Connections one server accepts at once; 0 is no limit. The HTTP server
# opens one or two per client connection and bounds those itself
# ([http] max_connections, max_readers, max_writers); a fixed limit here
# would make the connection over it wait in qemu-nbd's backlog.
SHARED = 0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# glibc's largest mmap threshold (HEAP_MAX_SIZE / 2 on 64-bit): request
# buffers up to this size come from the heap. Free heap above the trim
# threshold is returned, so buffers freed between requests stay mapped.
REUSE_BUFFERS_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"
# sockaddr_un.sun_path, including the terminating NUL (unix(7)).
_SUN_PATH_MAX = 107
_POLL_INTERVAL = 0.01


class QemuNbd:
    """A qemu-nbd serving one image; ``url`` is what a ticket's url takes."""

    def __init__(
        self,
        image: str,
        fmt: str,
        socket_path: str,
        *,
        read_only: bool = False,
        bitmap: str | None = None,
        export_name: str = "",
        sd_id: str = "-",
        vol_id: str | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        spawner: spawn.Spawner | None = None,
        pid_file: Path | None = None,
        reuse_buffers: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
        self.image = image
        self.fmt = fmt
        self.socket_path = socket_path
        self.read_only = read_only
        self.bitmap = bitmap
        self.export_name = export_name
        # Only for error messages: the caller knows the volume, we know a path.
        self._sd_id = sd_id
        self._vol_id = vol_id or os.path.basename(image)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        # Without a spawner the calling thread forks, and must outlive the
        # server (storage.spawn): fine for a test or a tool, not the daemon.
        self._popen = spawner.popen if spawner is not None else spawn.popen
        self._pid_file = pid_file
        self.reuse_buffers = reuse_buffers
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def __enter__(self) -> QemuNbd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        url = f"nbd:unix:{self.socket_path}"
        return f"{url}:exportname={self.export_name}" if self.export_name else url

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self, *, direct: bool) -> list[str]:
        """The qemu-nbd argv; direct says whether the image accepts O_DIRECT."""
        argv = [
            "qemu-nbd",
            "--persistent",
            f"--shared={SHARED}",
            f"--format={self.fmt}",
            f"--socket={self.socket_path}",
            f"--export-name={self.export_name}",
        ]
        # aio=native needs O_DIRECT; without it qemu uses its thread pool.
        argv += ["--cache=none", "--aio=native"] if direct else ["--cache=writeback"]
        if self.fmt == "qcow2":
            # Tells "unallocated in this image" from "allocated zeros"; on raw
            # it would report every hole as allocated.
            argv.append("--allocation-depth")
        if self.bitmap is not None:
            argv.append(f"--bitmap={self.bitmap}")
        if self.read_only:
            argv.append("--read-only")
        else:
            # Lets zero requests of sparse tickets punch holes; qemu-nbd
            # ignores discard by default.
            argv.append("--discard=unmap")
        argv.append(self.image)
        return argv

    def environment(self) -> dict[str, str] | None:
        """The server's environment; None inherits ours unchanged."""
        if not self.reuse_buffers:
            return None
        env = dict(os.environ)
        # Tunables already set come last: glibc takes the last value given.
        env["GLIBC_TUNABLES"] = ":".join(
            t for t in (REUSE_BUFFERS_TUNABLES, os.environ.get("GLIBC_TUNABLES")) if t
        )
        return env

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("qemu-nbd already started")
        self._check_socket_path()
        argv = self.command(direct=self._direct_io_works())
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = self._popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                close_fds=True,
                env=self.environment(),
            )
        except OSError as e:
            self._close_stderr()
            raise self._error("serve", f"cannot run qemu-nbd: {e.strerror}") from e
        log.info(
            "START qemu-nbd pid=%d image=%s format=%s socket=%s argv=%s",
            self._proc.pid,
            self.image,
            self.fmt,
            self.socket_path,
            argv,
        )
        try:
            self._write_pid_file(self._proc.pid, argv)
            self._wait_until_serving(self._proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server and reap it; safe to call again or before start."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None:
                self._terminate(proc)
        finally:
            self._close_stderr()
            self._remove_socket()
            if self._pid_file is not None:
                self._pid_file.unlink(missing_ok=True)

    # Starting.

    def _check_socket_path(self) -> None:
        if len(os.fsencode(self.socket_path)) > _SUN_PATH_MAX:
            raise self._error(
                "serve", f"socket path longer than {_SUN_PATH_MAX} bytes: {self.socket_path}"
            )
        try:
            if _accepts(self.socket_path):
                # qemu-nbd would unlink it and take over: two servers on one volume.
                raise self._error("serve", f"another server listens on {self.socket_path}")
            self._remove_socket()
            os.makedirs(os.path.dirname(self.socket_path) or ".", exist_ok=True)
        except OSError as e:
            raise self._error("serve", f"cannot use socket {self.socket_path}: {e.strerror}") from e

    def _write_pid_file(self, pid: int, argv: list[str]) -> None:
        if self._pid_file is None:
            return
        try:
            pidfiles.write(self._pid_file, pidfiles.record_of(pid, argv))
        except OSError as e:
            raise self._error(
                "serve", f"cannot write pid file {self._pid_file}: {e.strerror}"
            ) from e

    def _direct_io_works(self) -> bool:
        try:
            fd, block_size = directio.open_aligned(self.image, os.O_RDONLY)
        except OSError as e:
            raise self._error("serve", f"cannot open {self.image}: {e.strerror}") from e
        os.close(fd)
        return block_size > 1

    def _wait_until_serving(self, proc: subprocess.Popen[bytes]) -> None:
        # qemu-nbd says nothing when it is ready: retry an NBD handshake (a
        # bare connect makes it log a failed negotiation) and watch its exit.
        deadline = time.monotonic() + self._start_timeout
        while not _negotiates(self.socket_path, self.export_name):
            try:
                status = proc.wait(_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise self._error(
                        "serve",
                        f"qemu-nbd not listening after {self._start_timeout}s"
                        + self._stderr_suffix(),
                    ) from None
                continue
            raise self._error(
                "serve", f"qemu-nbd exited with status {status}" + self._stderr_suffix()
            )
        log.info("SERVING qemu-nbd pid=%d socket=%s", proc.pid, self.socket_path)

    # Stopping.

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            # A read-only server has nothing to write back, and its orderly
            # exit waits some tens of milliseconds for qemu's RCU thread:
            # a short transfer of the client waits for it too.
            proc.send_signal(signal.SIGKILL if self.read_only else signal.SIGTERM)
            try:
                _wait(proc, self._stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "KILL qemu-nbd pid=%d: no exit %.1fs after SIGTERM",
                    proc.pid,
                    self._stop_timeout,
                )
                proc.kill()
                try:
                    proc.wait(self._stop_timeout)
                except subprocess.TimeoutExpired:
                    raise self._error(
                        "stop serving", f"qemu-nbd pid {proc.pid} survived SIGKILL"
                    ) from None
        # SIGTERM is how we stop it: a clean exit after it is not an error.
        status = proc.returncode
        if status not in (0, -signal.SIGTERM, -signal.SIGKILL):
            log.warning(
                "STOPPED qemu-nbd pid=%d status=%s%s", proc.pid, status, self._stderr_suffix()
            )
        else:
            log.info("STOPPED qemu-nbd pid=%d status=%s", proc.pid, status)

    def _remove_socket(self) -> None:
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    # Plumbing.

    def _stderr_suffix(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()[-2000:]
        return f": {text}" if text else ""

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _error(self, action: str, reason: str) -> VolumeError:
        log.error(
            "QEMU-NBD %s failed image=%s socket=%s reason=%s",
            action.upper(),
            self.image,
            self.socket_path,
            reason,
        )
        return VolumeError(action=action, sd_id=self._sd_id, vol_id=self._vol_id, reason=reason)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """proc.wait(timeout), woken by the exit itself: Popen.wait with a
    timeout polls with sleeps that double up to 50 ms, which can add tens
    of milliseconds to a server that exits promptly (pidfd_open(2))."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        proc.wait(timeout)
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    proc.wait(timeout)


def _negotiates(path: str, export_name: str) -> bool:
    """True if an NBD server completes a handshake on the unix socket path."""
    h = nbd.NBD()
    h.set_export_name(export_name)
    try:
        h.connect_unix(path)
    except nbd.Error:
        return False
    h.shutdown()
    return True


def _accepts(path: str) -> bool:
    """True if a server accepts connections on the unix socket path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            return False
        raise
    finally:
        sock.close()
    return True
