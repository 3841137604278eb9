"""Child processes that die with the daemon.

A qemu-nbd started for a volume must not outlive a daemon killed with
SIGKILL: it would hold the volume open (and an LV active) with nobody to
stop it. The child asks the kernel for a signal when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, prctl(2)), set between fork and exec.

Two traps, and how they are handled:

- The "parent" of PR_SET_PDEATHSIG is the *thread* that forked, not the
  process: a child forked by a control-connection thread would be killed
  when vdsm closes that connection. So the daemon forks every such child
  from one thread of its own (``Spawner``), which lives as long as the
  process: the signal comes when, and only when, the daemon is gone.
- If the daemon dies between the fork and the prctl, no signal will ever
  come. After the prctl the child checks that its parent is still the
  daemon's pid and kills itself otherwise.

The check runs as ``preexec_fn``, Python code in the forked child of a
threaded process. It only calls prctl, getppid and kill, through a libc
function looked up before the fork, so it takes no lock that another
thread could have held at fork time.

Children are sent SIGTERM, not SIGKILL: qemu-nbd then flushes the image
and removes its socket, as when it is stopped normally. One that ignores
it is killed by the next start's clean-up (``storage.rundir``).
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

# linux/prctl.h
PR_SET_PDEATHSIG = 1
DEATH_SIGNAL = signal.SIGTERM

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int

Popen = subprocess.Popen[bytes]


def die_with(parent: int, signo: int = DEATH_SIGNAL) -> Callable[[], None]:
    """A preexec_fn: the child gets signo when the forking thread exits."""

    def setup() -> None:
        if _prctl(PR_SET_PDEATHSIG, signo, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        if os.getppid() != parent:
            # Orphaned before the prctl took effect: nobody will stop us.
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def popen(argv: list[str], **kwargs: Any) -> Popen:
    """Start argv from the calling thread, which must outlive the child."""
    return subprocess.Popen(argv, preexec_fn=die_with(os.getpid()), **kwargs)


class Spawner:
    """Forks children from one thread that lives as long as the process.

    The thread starts with the first child and never ends (it is a daemon
    thread: it goes with the process); stopping it would signal every child.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], Future[Popen]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def popen(self, argv: list[str], **kwargs: Any) -> Popen:
        """subprocess.Popen(argv, **kwargs), forked by the spawner thread."""
        self._ensure_thread()
        done: Future[Popen] = Future()
        self._requests.put((argv, kwargs, done))
        return done.result()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="spawner", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            argv, kwargs, done = self._requests.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(popen(argv, **kwargs))
            except BaseException as e:
                done.set_exception(e)
