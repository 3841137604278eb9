"""Hooks: an administrator's executables run at ticket lifecycle events.

Rules:
- The hooks of an event are the executable regular files in
  ``<dir>/<event>/`` whose names do not start with a dot, run one at a time
  in file-name order. The directory is read at every event, so installing
  or removing a hook needs no restart.
- A hook reads the ticket's status as JSON on stdin and gets
  ``TICKET_UUID``, ``TRANSFER_ID`` and ``EVENT`` (and the configured
  extras such as ``TRANSFER_RECORD``) in an environment of its own: the
  daemon's environment may hold what a hook has no business seeing.
- Each hook runs in a session of its own; when it outlives ``timeout`` the
  whole session is killed and the hook counts as failed.
- ``before_*`` hooks run in the caller's thread; the first that fails
  stops the rest and vetoes the operation with HookFailed, carrying its
  stderr.
- ``after_*`` hooks run in order on one background thread, so they never
  delay or fail the operation that triggered them; failures are logged.
- Output goes to temporary files, not pipes: a hook that leaves a child
  holding its stdout cannot hang the runner, and the log gets at most
  MAX_OUTPUT bytes of each stream.
- Logs name the transfer id, never the ticket uuid (the secret).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import HookFailed
from .tickets import Ticket

log = logging.getLogger(__name__)

EVENTS = (
    "before_ticket_add",
    "after_ticket_add",
    "before_ticket_remove",
    "after_ticket_remove",
    "after_transfer_idle",
)
MAX_OUTPUT = 64 * 1024
# Stderr carried by HookFailed to the caller: the end says why.
MAX_VETO_STDERR = 4096
# after_* events waiting for the background thread; more are dropped.
QUEUE_SIZE = 1024
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Payload = Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    hook: str
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def discover(directory: Path, event: str) -> list[Path]:
    """The hooks of event, in the order they run."""
    try:
        entries = sorted(os.scandir(directory / event), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(e.path) for e in entries if _is_hook(e)]


def _is_hook(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_file() and os.access(entry.path, os.X_OK)


def execute(path: Path, stdin: bytes, env: Mapping[str, str], timeout: float) -> Outcome:
    """Run one hook to its end or its time limit."""
    with (
        tempfile.TemporaryFile() as inp,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        inp.write(stdin)
        inp.seek(0)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [str(path)],
                stdin=inp,
                stdout=out,
                stderr=err,
                env=dict(env),
                cwd="/",
                start_new_session=True,
            )
        except OSError as e:
            # Like a shell: 126 found but not runnable (bad interpreter line).
            return Outcome(path.name, 126, b"", str(e).encode(), False, 0.0)
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # The session holds the hook and whatever it started.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        elapsed = time.monotonic() - start
        return Outcome(path.name, proc.returncode, _head(out), _head(err), timed_out, elapsed)


def _head(f: IO[bytes]) -> bytes:
    f.seek(0)
    return f.read(MAX_OUTPUT)


class Hooks:
    """Runs the hooks of an event: now and vetoing, or later and logged."""

    def __init__(
        self, directory: str, *, timeout: float, env: Mapping[str, str] | None = None
    ) -> None:
        self._dir = Path(directory)
        self._event_dirs = {event: os.path.join(directory, event) for event in EVENTS}
        self._timeout = timeout
        self._env = {"PATH": SAFE_PATH, "LC_ALL": "C.UTF-8", **(env or {})}
        self._queue: queue.Queue[tuple[str, Payload] | None] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False

    def run(self, event: str, payload: Payload) -> None:
        """Run the hooks of event with payload (a ticket status) on stdin.

        before_* events run now and raise HookFailed on the first failure;
        after_* events are queued and never raise.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown hook event {event!r}")
        if event.startswith("before_"):
            self._run_all(event, payload, veto=True)
        elif self.installed(event):
            self._enqueue(event, payload)

    def installed(self, event: str) -> bool:
        """Whether event has a hook now.

        Most hosts have none: checking first spares the caller the payload
        and the runner thread's wake-up, which were a third of a ticket
        verb's time. The runner reads the directory again when it runs.
        """
        try:
            with os.scandir(self._event_dirs[event]) as entries:
                return any(_is_hook(e) for e in entries)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def close(self, timeout: float) -> None:
        """Stop taking after_* events; wait up to timeout for queued ones.

        A hook still running when the wait ends keeps running on its own:
        its record is worth more than a prompt exit.
        """
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is None:
            return
        with suppress(queue.Full):
            self._queue.put_nowait(None)
        worker.join(timeout)
        if worker.is_alive():
            log.warning("HOOKS unfinished pending=%d", self._queue.qsize())

    def _enqueue(self, event: str, payload: Payload) -> None:
        with self._lock:
            if self._closed:
                log.warning(
                    "HOOK dropped event=%s transfer=%s reason=shutting down",
                    event,
                    payload.get("transfer_id"),
                )
                return
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hooks", daemon=True)
                self._worker.start()
        try:
            self._queue.put_nowait((event, payload))
        except queue.Full:
            log.error(
                "HOOK dropped event=%s transfer=%s reason=queue full",
                event,
                payload.get("transfer_id"),
            )

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            event, payload = item
            try:
                self._run_all(event, payload, veto=False)
            except Exception:
                log.exception("HOOK runner failed event=%s", event)

    def _run_all(self, event: str, payload: Payload, *, veto: bool) -> None:
        transfer = str(payload.get("transfer_id", "-"))
        stdin = json.dumps(dict(payload)).encode()
        env = {
            **self._env,
            "EVENT": event,
            "TRANSFER_ID": transfer,
            "TICKET_UUID": str(payload.get("uuid", "")),
        }
        for path in discover(self._dir, event):
            outcome = execute(path, stdin, env, self._timeout)
            _log_outcome(event, transfer, outcome, self._timeout)
            if outcome.ok:
                continue
            if veto:
                stderr = outcome.stderr[-MAX_VETO_STDERR:].decode("utf-8", "replace")
                if outcome.timed_out:
                    stderr += f"\n[killed after {self._timeout:g} seconds]"
                if outcome.timed_out:
                    what = f"killed after {self._timeout:g} seconds"
                elif outcome.returncode < 0:
                    what = f"killed by signal {-outcome.returncode}"
                else:
                    what = f"exit code {outcome.returncode}"
                raise HookFailed(
                    hook=outcome.hook,
                    event=event,
                    outcome=what,
                    status=outcome.returncode,
                    stderr=stderr,
                )


def _log_outcome(event: str, transfer: str, outcome: Outcome, timeout: float) -> None:
    level = logging.INFO if outcome.ok else logging.WARNING
    log.log(
        level,
        "HOOK event=%s hook=%s transfer=%s status=%d timed_out=%s elapsed=%.3f",
        event,
        outcome.hook,
        transfer,
        outcome.returncode,
        outcome.timed_out,
        outcome.elapsed,
    )
    for name, data in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
        for line in data.decode("utf-8", "replace").splitlines():
            log.log(level, "HOOK %s hook=%s transfer=%s | %s", name, outcome.hook, transfer, line)


class TicketHooks:
    """The hooks of a registry's tickets: its guard and its listener.

    The payload is the ticket's public status plus what only hooks need:
    ``duration`` (seconds since the ticket was added) and, after a removal,
    ``interrupted`` (whether the removal canceled running requests).
    """

    def __init__(self, hooks: Hooks, clock: Callable[[], float]) -> None:
        self._hooks = hooks
        self._clock = clock
        self._interrupted: weakref.WeakKeyDictionary[Ticket, bool] = weakref.WeakKeyDictionary()

    def payload(self, ticket: Ticket) -> dict[str, Any]:
        out = ticket.status().to_json()
        out["duration"] = round(self._clock() - ticket.created, 3)
        return out

    def run(self, event: str, ticket: Ticket) -> None:
        if self._hooks.installed(event):
            self._hooks.run(event, self.payload(ticket))

    def guard(self, action: str, ticket: Ticket) -> None:
        """Registry guard: before_ticket_add / before_ticket_remove may veto."""
        self.run(f"before_ticket_{action}", ticket)
        if action == "remove":
            # The registry cancels right after an agreed guard: requests
            # running now are the ones the removal cuts off.
            self._interrupted[ticket] = ticket.running() > 0

    def listener(self, event: str, ticket: Ticket) -> None:
        """Registry listener: after_ticket_add / after_ticket_remove."""
        if event == "added":
            self.run("after_ticket_add", ticket)
        elif event == "removed":
            interrupted = self._interrupted.pop(ticket, False)
            if self._hooks.installed("after_ticket_remove"):
                payload = self.payload(ticket)
                payload["interrupted"] = interrupted
                self._hooks.run("after_ticket_remove", payload)
