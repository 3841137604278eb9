"""The engine's side of an image transfer, scaled down in time, for tests.

``engine_ticket`` is the ticket the engine sends through vdsm's
``Host.add_image_ticket`` (keep its shape: it is what the engine sends).

``EngineDriver`` plays the loop of the engine's TransferDiskImage command
against a daemon's control socket: it adds the ticket, polls
``Host.get_image_ticket``, extends the ticket before it expires (from its
own clock, as the engine does, not from the daemon's ``expires_in``),
treats ``idle_time > inactivity_timeout`` with ``active`` false as a pause,
resumes when the user asks (extending the ticket, which may have expired
meanwhile), and finalizes with ``Host.remove_image_ticket``, retrying while
the daemon answers busy (vdsm's ImageDaemonError 482 with status 409). It
records the phases it went through.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

# vdsm's ImageDaemonError, which carries the daemon's status: 409 for a
# ticket whose requests did not stop yet (the engine retries the removal).
IMAGE_DAEMON_ERROR = 482
BUSY_STATUS = "status=409,"
IO_TIMEOUT = 10.0


def engine_ticket(url: str, **overrides: Any) -> dict[str, Any]:
    ticket = {
        "uuid": str(uuidlib.uuid4()),
        "timeout": 300,
        "inactivity_timeout": 60,
        "size": 1073741824,
        "url": url,
        "ops": ["write"],
        "sparse": True,
        "transfer_id": str(uuidlib.uuid4()),
        "dirty": False,
    }
    ticket.update(overrides)
    return ticket


class RpcError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"error {error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = str(error.get("message"))


class Vdsm:
    """What the engine reaches through vdsm: JSON-RPC on the control socket."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(IO_TIMEOUT)
        self._sock.connect(path)
        self._reader = self._sock.makefile("rb")
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> Any:
        req_id = next(self._ids)
        line = json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        self._sock.sendall(line.encode() + b"\n")
        while True:
            reply = json.loads(self._reader.readline())
            if reply.get("id") == req_id:
                break  # anything else is a notification
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        self._reader.close()
        self._sock.close()


class EngineDriver:
    def __init__(
        self,
        control_path: str,
        ticket: dict[str, Any],
        *,
        poll: float = 0.2,
        renew_margin: float = 1.5,
        verify: Callable[[], object] | None = None,
    ) -> None:
        self.ticket = ticket
        self.phases: list[str] = []
        self.extends = 0
        self.busy_retries = 0
        self.statuses: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._vdsm = Vdsm(control_path)
        self._poll = poll
        self._margin = renew_margin
        self._verify = verify
        self._expires = 0.0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._resume = False
        self._finalize = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self._enter("initializing")

    # What the user (the SDK or the browser) asks the engine.

    def start(self) -> None:
        self._thread.start()

    def resume(self) -> None:
        with self._lock:
            self._resume = True

    def finalize(self) -> None:
        with self._lock:
            self._finalize = True

    def wait_phase(self, phase: str, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: self.phase == phase or self.error is not None, timeout
            )

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._vdsm.close()

    @property
    def phase(self) -> str:
        return self.phases[-1]

    # The command's loop.

    def _run(self) -> None:
        try:
            self._add()
            self._enter("transferring")
            while self.phase not in ("finished", "failed"):
                time.sleep(self._poll)
                self._step()
        except BaseException as e:  # the test reports it
            with self._changed:
                self.error = e
                self._changed.notify_all()

    def _add(self) -> None:
        assert self._vdsm.call("Host.add_image_ticket", ticket=self.ticket) is True
        self._expires = time.monotonic() + self.ticket["timeout"]

    def _step(self) -> None:
        with self._lock:
            resume, finalize = self._resume, self._finalize
            self._resume = False
        if finalize and self.phase != "finalizing":
            self._enter("finalizing")
            self._remove()
            self._enter("finished" if self._verified() else "failed")
            return
        if self.phase == "paused":
            if resume:
                self._extend()
                self._enter("transferring")
            return
        status = self._vdsm.call("Host.get_image_ticket", uuid=self.ticket["uuid"])
        self.statuses.append(status)
        limit = status["inactivity_timeout"]
        if limit and not status["active"] and status["idle_time"] > limit:
            self._enter("paused")
            return
        if self._expires - time.monotonic() < self._margin:
            self._extend()

    def _extend(self) -> None:
        timeout = self.ticket["timeout"]
        assert (
            self._vdsm.call("Host.extend_image_ticket", uuid=self.ticket["uuid"], timeout=timeout)
            is True
        )
        self._expires = time.monotonic() + timeout
        self.extends += 1

    def _remove(self) -> None:
        for _ in range(50):
            try:
                assert self._vdsm.call("Host.remove_image_ticket", uuid=self.ticket["uuid"]) is True
                return
            except RpcError as e:
                if e.code != IMAGE_DAEMON_ERROR or BUSY_STATUS not in e.message:
                    raise
                self.busy_retries += 1
                time.sleep(self._poll)
        raise RuntimeError("ticket stayed busy")

    def _verified(self) -> bool:
        return self._verify is None or bool(self._verify())

    def _enter(self, phase: str) -> None:
        with self._changed:
            if not self.phases or self.phases[-1] != phase:
                self.phases.append(phase)
            self._changed.notify_all()
