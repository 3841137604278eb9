"""Block device events from udev.

Theory of operation: one netlink monitor (source "udev", so events arrive
after udevd ran its rules and created the /dev links) for the block
subsystem, read by one thread. Two kinds of interest are registered:

- a *waiter* for a device name (a node such as /dev/dm-3 or a link such
  as /dev/<vg>/<lv>): wait_for_device registers it first and only then
  looks at the current state, so an event that lands between the two is
  not lost; it returns when udev has initialized a block device with that
  name, or raises TimeoutError at the deadline. No sleep loops.
- a *watch* on a device number: its callback gets (node, action) for every
  ``remove`` and ``change`` of that device. A device-mapper device whose
  table is swapped for the error target (``dmsetup remove --force`` on an
  open device) only reports ``change``; telling that apart from a benign
  refresh is the callback owner's job. A watch ends at ``remove``, since
  the device number may be reused.

Callbacks run on a separate dispatch thread, so a slow callback (one that
runs lvm, say) never delays the waiters.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Callback = Callable[[str, str], None]
WATCHED_ACTIONS = frozenset({"remove", "change"})
READY_ACTIONS = frozenset({"add", "change", "bind", "online"})


@dataclass(frozen=True)
class Event:
    action: str
    node: str
    links: frozenset[str]
    number: int

    def names(self, path: str) -> bool:
        return path == self.node or path in self.links


def event_of(device: pyudev.Device) -> Event:
    return Event(
        action=device.action or "",
        node=device.device_node or "",
        links=frozenset(device.device_links),
        number=int(device.device_number),
    )


class Watch:
    def __init__(self, watcher: DeviceWatcher, number: int, callback: Callback) -> None:
        self._watcher = watcher
        self.number = number
        self.callback = callback

    def cancel(self) -> None:
        self._watcher._unwatch(self)


class _Waiter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.node: str | None = None
        self.ready = threading.Event()


class DeviceWatcher:
    def __init__(
        self, *, clock: Clock = time.monotonic, context: pyudev.Context | None = None
    ) -> None:
        self._clock = clock
        self._context = context or pyudev.Context()
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._watches: dict[int, list[Watch]] = {}
        self._calls: queue.SimpleQueue[tuple[Callback, str, str] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._monitor: pyudev.Monitor | None = None
        self._wakeup: tuple[int, int] | None = None

    # Lifecycle.

    def start(self) -> None:
        monitor = pyudev.Monitor.from_netlink(self._context, source="udev")
        monitor.filter_by("block")
        # Receiving starts here: events from now on queue in the socket.
        monitor.start()
        self._monitor = monitor
        self._wakeup = os.pipe()
        self._threads = [
            threading.Thread(target=self._read, name="udev-monitor", daemon=True),
            threading.Thread(target=self._dispatch, name="udev-dispatch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("UDEV monitor started")

    def stop(self) -> None:
        if self._wakeup is None:
            return
        os.write(self._wakeup[1], b"x")
        self._calls.put(None)
        for thread in self._threads:
            thread.join()
        for fd in self._wakeup:
            os.close(fd)
        self._wakeup = None
        self._monitor = None
        log.info("UDEV monitor stopped")

    # Waiting for a device.

    def wait_for_device(self, path: str, deadline: float) -> str:
        """The node of the block device named path, once udev has set it up."""
        waiter = _Waiter(path)
        with self._lock:
            self._waiters.append(waiter)
        try:
            node = self._current(path)
            if node is not None:
                return node
            while True:
                left = deadline - self._clock()
                if left <= 0 or not waiter.ready.wait(left):
                    raise TimeoutError(f"device {path} did not appear")
                # The event may have named a link that is already gone again.
                node = self._current(path)
                if node is not None:
                    return node
                waiter.ready.clear()
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def _current(self, path: str) -> str | None:
        try:
            if not stat.S_ISBLK(os.stat(path).st_mode):
                return None
            device = pyudev.Devices.from_device_file(self._context, path)
        except (OSError, pyudev.DeviceNotFoundError):
            return None
        return str(device.device_node) if device.is_initialized else None

    # Watching a device.

    def watch(self, path: str, callback: Callback) -> Watch:
        """Call callback(node, action) on remove or change of path's device."""
        number = os.stat(path).st_rdev
        w = Watch(self, number, callback)
        with self._lock:
            self._watches.setdefault(number, []).append(w)
        log.debug("UDEV watch path=%s device=%d:%d", path, os.major(number), os.minor(number))
        return w

    def _unwatch(self, w: Watch) -> None:
        with self._lock:
            watches = self._watches.get(w.number, [])
            if w in watches:
                watches.remove(w)
            if not watches:
                self._watches.pop(w.number, None)

    # Threads.

    def _read(self) -> None:
        assert self._monitor is not None and self._wakeup is not None
        poller = select.poll()
        poller.register(self._monitor.fileno(), select.POLLIN)
        poller.register(self._wakeup[0], select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._wakeup[0] in ready:
                return
            while (device := self._monitor.poll(timeout=0)) is not None:
                self._handle(event_of(device))

    def _handle(self, event: Event) -> None:
        log.debug("UDEV event action=%s node=%s", event.action, event.node)
        with self._lock:
            if event.action in READY_ACTIONS:
                for waiter in self._waiters:
                    if event.names(waiter.path):
                        waiter.ready.set()
            watches = []
            if event.action in WATCHED_ACTIONS:
                watches = list(self._watches.get(event.number, []))
                if event.action == "remove":
                    self._watches.pop(event.number, None)
        for w in watches:
            self._calls.put((w.callback, event.node, event.action))

    def _dispatch(self) -> None:
        while (call := self._calls.get()) is not None:
            callback, node, action = call
            try:
                callback(node, action)
            except Exception:
                log.exception("UDEV callback failed node=%s action=%s", node, action)
