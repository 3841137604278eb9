"""Running as a system service: readiness, termination and privilege drop.

sd_notify is a datagram of ``KEY=VALUE`` lines sent to the unix socket
named by ``NOTIFY_SOCKET`` (sd_notify(3)); a name starting with ``@`` is
an abstract address. The protocol is this small, so we speak it directly
rather than depending on libsystemd.

Privileges are dropped after everything that needs root at start-up is
done: keys read, listeners bound, log file opened. The sockets the daemon
created are handed to the new owner first, so it can still remove them at
exit and vdsm's group can still connect. setresuid and friends go through
glibc, which applies them to every thread of the process.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import signal
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send state (e.g. "READY=1") to the service manager; False if none."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        # systemd times the start out if READY never arrives; say why.
        log.warning("NOTIFY failed state=%s reason=%s", state, e)
        return False
    return True


class Signals:
    """Waits in the main thread for one of signums, whichever thread gets it.

    The kernel hands a process signal to any thread that does not block it,
    and Python runs the handler only when the main thread next executes
    bytecode: a main thread asleep on a lock would sleep through SIGTERM.
    The C-level handler also writes the signal number to the wakeup fd
    (signal.set_wakeup_fd), so the main thread sleeps reading that instead.
    """

    def __init__(self, signums: Iterable[int]) -> None:
        self._signums = frozenset(signums)
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in self._signums:
            # A Python handler, so the C handler writes the wakeup byte.
            signal.signal(signum, _ignore)

    def wait(self) -> int:
        """Block until one of the signals arrives; return its number."""
        while True:
            for signum in self._reader.recv(64):
                if signum in self._signums:
                    return signum

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._reader.close()
        self._writer.close()


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    gid: int


def identity(user: str, group: str) -> Identity:
    """The identity named by user and group (empty group: the user's own)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise IdentityError(f"no such user: {user!r}") from None
    if not group:
        return Identity(user, pw.pw_uid, pw.pw_gid)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise IdentityError(f"no such group: {group!r}") from None
    return Identity(user, pw.pw_uid, gid)


def drop_privileges(who: Identity, *, chown: Iterable[str] = ()) -> None:
    """Give paths to who, then become who for good (real, effective, saved)."""
    for path in chown:
        if path and not path.startswith("\0"):
            os.chown(path, who.uid, who.gid)
    # The user's supplementary groups (kvm, disk) open images; root's go.
    os.initgroups(who.user, who.gid)
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    if who.uid != 0 and _can_regain_root():
        raise IdentityError("privileges could be regained after dropping them")
    log.info("DROPPED privileges user=%s uid=%d gid=%d", who.user, who.uid, who.gid)


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True
