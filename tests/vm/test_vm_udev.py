"""storage.udev against systemd-udevd and device-mapper."""

from __future__ import annotations

import errno
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from storage.udev import DeviceWatcher
from tests.vm.vmstorage import Domain, dm_name, lvm, run

VolumeFactory = Callable[..., dict[str, Any]]
EVENT_TIMEOUT = 30


def lv_path(domain: Domain, vol: dict[str, Any]) -> str:
    return f"/dev/{domain.sd_id}/{vol['vol_id']}"


def activate(domain: Domain, vol: dict[str, Any]) -> None:
    lvm("lvchange", "-ay", f"{domain.sd_id}/{vol['vol_id']}", devices=domain.devices)


def deactivate(domain: Domain, vol: dict[str, Any]) -> None:
    lvm("lvchange", "-an", f"{domain.sd_id}/{vol['vol_id']}", devices=domain.devices)


def test_wait_sees_device_appear(
    domain: Domain, make_volume: VolumeFactory, watcher: DeviceWatcher
) -> None:
    vol = make_volume()
    found: queue.Queue[str | BaseException] = queue.Queue()

    def wait() -> None:
        try:
            found.put(
                watcher.wait_for_device(
                    lv_path(domain, vol), deadline=time.monotonic() + EVENT_TIMEOUT
                )
            )
        except BaseException as e:
            found.put(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        activate(domain, vol)
    finally:
        waiter.join()
    node = found.get_nowait()
    assert isinstance(node, str) and node.startswith("/dev/dm-")
    assert os.path.realpath(lv_path(domain, vol)) == node
    deactivate(domain, vol)


def test_wait_for_present_device_returns_at_once(
    domain: Domain, make_volume: VolumeFactory, watcher: DeviceWatcher
) -> None:
    vol = make_volume()
    activate(domain, vol)
    try:
        node = watcher.wait_for_device(lv_path(domain, vol), deadline=time.monotonic())
        assert node == os.path.realpath(lv_path(domain, vol))
    finally:
        deactivate(domain, vol)


def test_wait_for_absent_device_times_out(domain: Domain, watcher: DeviceWatcher) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        watcher.wait_for_device(f"/dev/{domain.sd_id}/missing", deadline=start + 0.5)
    assert time.monotonic() - start < 10


def test_watch_reports_removed_device(
    domain: Domain, make_volume: VolumeFactory, watcher: DeviceWatcher
) -> None:
    vol = make_volume()
    activate(domain, vol)
    node = os.path.realpath(lv_path(domain, vol))
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    watch = watcher.watch(lv_path(domain, vol), lambda n, a: events.put((n, a)))
    try:
        deactivate(domain, vol)
        # A late "change" from the activation may come first; "remove" must follow.
        deadline = time.monotonic() + EVENT_TIMEOUT
        seen: list[tuple[str, str]] = []
        while not seen or seen[-1] != (node, "remove"):
            seen.append(events.get(timeout=max(0.0, deadline - time.monotonic())))
        assert all(e == (node, "change") for e in seen[:-1]), seen
    finally:
        watch.cancel()


def test_watch_reports_table_swapped_for_error_target(
    domain: Domain, make_volume: VolumeFactory, watcher: DeviceWatcher
) -> None:
    vol = make_volume()
    activate(domain, vol)
    path = lv_path(domain, vol)
    node = os.path.realpath(path)
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    watch = watcher.watch(path, lambda n, a: events.put((n, a)))
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        # The device is open: device-mapper keeps it and fails all its I/O.
        proc = run(
            "dmsetup", "remove", "--force", dm_name(domain.sd_id, vol["vol_id"]), check=False
        )
        assert "busy" in proc.stderr
        got = events.get(timeout=EVENT_TIMEOUT)
        assert got[0] == node and got[1] in ("change", "remove")
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        with pytest.raises(OSError) as e:
            os.preadv(fd, [buf], 0)
        assert e.value.errno == errno.EIO
    finally:
        os.close(fd)
        watch.cancel()
