"""What the browser lane runs beside the daemon: Chromium, the page's own
web server, and a TCP relay: a slow link, or one that breaks.

Chromium is Debian's ``/usr/bin/chromium``, started here (not by
Playwright) so the lane owns its process group, its flags, its profile and
its HOME; Playwright attaches over the DevTools protocol on loopback. The
daemon's CA is trusted the way a user trusts one on Linux: in the NSS
database under HOME, never with ``--ignore-certificate-errors``.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from tests.support.relay import LoopbackRelay

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 30.0


class LaneError(Exception):
    """The lane could not set up: a failure, never a reason to skip."""


def trusting_home(home: Path, ca: Path) -> Path:
    """A HOME whose NSS database trusts ca for TLS servers."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    for argv in (
        ["certutil", "-N", "-d", db, "--empty-password"],
        ["certutil", "-A", "-d", db, "-t", "C,,", "-n", "vdsm-imageio test CA", "-i", str(ca)],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=IO_TIMEOUT)
        if out.returncode != 0:
            raise LaneError(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return home


class Chromium:
    """One headless Chromium with a fresh profile; stop() ends its group."""

    def __init__(self, home: Path, profile: Path) -> None:
        self.log_path = profile.parent / "chromium.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "TMPDIR": str(profile.parent),
            # A desktop session's locale: in the C locale Chromium cannot
            # name a file outside ASCII and saves "download" instead.
            "LANG": "C.UTF-8",
        }
        self._log = open(self.log_path, "wb")  # owned until stop()
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
            # Its own process group: the renderers and helpers go with it.
            start_new_session=True,
        )
        try:
            self.endpoint = self._wait_devtools(profile / "DevToolsActivePort")
        except BaseException:
            self.stop()
            raise

    def _wait_devtools(self, port_file: Path) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            exited = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            if exited is not None:
                raise LaneError(f"chromium exited with {exited.si_status}:\n{self.log()}")
            try:
                port = port_file.read_text().splitlines()[0]
            except (OSError, IndexError):
                time.sleep(0.05)
                continue
            return f"http://127.0.0.1:{port}"
        raise LaneError(f"chromium did not open DevTools in {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-10000:]

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to whatever is left of it."""
        pid = self.proc.pid
        try:
            if self.proc.returncode is None:
                _signal_group(pid, signal.SIGTERM)
                # Wait without reaping: while the browser process is a
                # zombie its pid, the group id, cannot be reused, so the
                # SIGKILL below reaches only processes of this group.
                _wait_exit(pid, STOP_TIMEOUT)
                _signal_group(pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
        finally:
            self._log.close()


def _signal_group(pgid: int, signo: int) -> None:
    try:
        os.killpg(pgid, signo)
    except ProcessLookupError:
        pass


def _wait_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return
        time.sleep(0.05)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class PageServer:
    """Serves directory over plain HTTP on 127.0.0.1 (another origin)."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(STOP_TIMEOUT)


class Relay(LoopbackRelay):
    """A TCP relay to the daemon: a slow link, or one that breaks.

    Bytes pass through untouched (TLS stays between the browser and the
    daemon). ``rate`` bounds the bytes per second from the browser, a slow
    link that leaves time to cancel in the middle of a chunk.

    ``arm_resets(after=, count=)``: once ``after`` more bytes from the
    browser have passed in total, the next ``count`` connections are reset
    as soon as each has carried more than ``MIN_CARRIED`` bytes (past its
    TLS handshake and request head, so within a body): an RST to the
    browser (SO_LINGER 0, RFC 9293 section 3.6.1 abort) and the daemon's
    side shut down, what a broken middlebox or a host going away does.
    Chromium sends a request again by itself, up to twice, when a reused
    keep-alive connection breaks before any response (that may be the
    server closing an idle connection, not a failure); only then does the
    error reach the page. So ``count=3`` makes sure the page sees a reset.
    """

    MIN_CARRIED = 64 * 1024
    PIECE = 64 * 1024

    def __init__(self, port: int, rate: int | None = None) -> None:
        self._rate = rate
        self._after: int | None = None
        self._left = 0
        self._total = 0
        self.resets = 0
        super().__init__(port, connect_timeout=IO_TIMEOUT, join_timeout=STOP_TIMEOUT)

    def arm_resets(self, *, after: int, count: int) -> None:
        with self._lock:
            self._after = self._total + after
            self._left = count

    def _connected(self, client: socket.socket, upstream: socket.socket) -> None:
        # Bounded by the daemon's and the browser's own timeouts, and
        # by stop(), which shuts every socket down.
        for s in (client, upstream):
            s.settimeout(None)
        self._spawn(self._pump, client, upstream, True)
        self._spawn(self._pump, upstream, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, from_browser: bool) -> None:
        carried = 0
        started = time.monotonic()
        try:
            while True:
                data = src.recv(self.PIECE)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                carried += len(data)
                if from_browser and self._reset_now(carried, len(data)):
                    # Wake the other direction first: close() alone would
                    # not end a recv() blocked in another thread.
                    dst.shutdown(socket.SHUT_RDWR)
                    src.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    src.close()
                    return
                if from_browser and self._rate:
                    ahead = started + carried / self._rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                dst.sendall(data)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _reset_now(self, carried: int, n: int) -> bool:
        with self._lock:
            self._total += n
            if self._after is None or self._left == 0:
                return False
            if self._total <= self._after or carried <= self.MIN_CARRIED:
                return False
            self._left -= 1
            self.resets += 1
            return True
