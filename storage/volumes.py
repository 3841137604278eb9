"""The lifecycle of prepared volumes: the storage plane's one owner.

``prepare`` and ``release`` plug into the ticket registry as its
``resolve_url`` and ``release``: a ticket with a ``url`` passes through; a
ticket with a ``volume`` gets the file URL of a link this module owns.

Rules:
- A volume (domain, sd_id, img_id, vol_id) is prepared by its first ticket
  and torn down with its last: references are counted per ticket uuid,
  with multiplicity (two racing adds of one uuid prepare twice and the
  registry releases the loser once).
- Prepare, in order: lease, storage (file: find it; block: activate the LV
  and wait for its device through udev), link, qemu-nbd, device watch. It
  is all or nothing: a failure undoes every step this call took, in
  reverse order.
- A volume with ``nbd: true``, format ``cow`` (qcow2 is only meaningful as
  guest data) or a ``bitmap`` is served by one qemu-nbd of its own, whose
  ``nbd:unix:`` URL the tickets get. It is read-only when the first ticket
  is; a later write ticket is then refused (VolumeError), never silently
  served read-only. Tickets sharing a volume must agree on how it is
  served (nbd, format, bitmap).
- The lease is held while at least one write ticket whose volume carries
  ``lease`` uses the volume; read tickets take none.
- Teardown undoes prepare in reverse order (qemu-nbd stops before the LV
  is deactivated: it holds the device open), tries every step, and raises
  the first failure (an LV open elsewhere stays active and is reported).
  Only an LV this module activated is deactivated: one that was already
  active belongs to someone else (a running VM, vdsm).
- A block device that udev reports removed, or changed such that LVM no
  longer sees the LV active (its table swapped for the error target), is
  lost: on_lost(uuid, device, action) runs for each ticket using it.
- Slow work runs under the volume's own lock, never the table lock, so
  different volumes prepare in parallel.
- Logs name transfers, never ticket uuids (they are secrets).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdsm_imageio.errors import ImageioError, ImageNotFound, VolumeError, VolumeNotFound
from vdsm_imageio.ticketspec import TicketSpec, Volume

from .files import find_volume
from .leases import Lease, Leases
from .links import Links
from .lvm import Lvm
from .qemu_nbd import QemuNbd
from .spawn import Spawner
from .udev import DeviceWatcher, Watch

log = logging.getLogger(__name__)

Clock = Callable[[], float]
LostCallback = Callable[[str, str, str], None]
Key = tuple[str, str, str, str]
# Ticket volume format -> qemu's name for it.
QEMU_FORMATS = {"raw": "raw", "cow": "qcow2"}


@dataclass
class _Prepared:
    volume: Volume
    url: str
    target: str
    device: str | None = None
    activated: bool = False
    watch: Watch | None = None
    lease: Lease | None = None
    server: QemuNbd | None = None
    refs: Counter[str] = field(default_factory=Counter)
    writers: Counter[str] = field(default_factory=Counter)
    transfers: dict[str, str] = field(default_factory=dict)


class Volumes:
    def __init__(
        self,
        *,
        file_root: Path,
        run_dir: Path,
        lvm: Lvm,
        udev: DeviceWatcher,
        leases: Leases,
        clock: Clock,
        device_timeout: float = 30.0,
        on_lost: LostCallback | None = None,
        spawner: Spawner | None = None,
    ) -> None:
        self._file_root = file_root
        self._links = Links(run_dir)
        self._nbd_dir = run_dir / "nbd"
        self._lvm = lvm
        self._udev = udev
        self._leases = leases
        self._clock = clock
        self._device_timeout = device_timeout
        self.on_lost = on_lost
        self._spawner = spawner
        self._lock = threading.Lock()
        self._volumes: dict[Key, _Prepared] = {}
        self._key_locks: dict[Key, tuple[threading.Lock, list[int]]] = {}

    # The registry's hooks.

    def prepare(self, spec: TicketSpec) -> str:
        vol = spec.volume
        if vol is None:
            assert spec.url is not None
            return spec.url
        key = _key(vol)
        wants_lease = vol.lease is not None and spec.allows("write")
        with self._locked(key):
            state = self._volumes.get(key)
            if state is None:
                state = self._setup(spec, wants_lease)
                with self._lock:
                    self._volumes[key] = state
            else:
                _check_shareable(state, spec)
                if wants_lease and state.lease is None:
                    state.lease = self._acquire(vol)
            with self._lock:
                state.refs[spec.uuid] += 1
                if wants_lease:
                    state.writers[spec.uuid] += 1
                state.transfers[spec.uuid] = spec.transfer_id
            log.info(
                "PREPARED transfer=%s sd=%s vol=%s refs=%d lease=%s",
                spec.transfer_id,
                vol.sd_id,
                vol.vol_id,
                sum(state.refs.values()),
                state.lease is not None,
            )
            return state.url

    def release(self, spec: TicketSpec) -> None:
        vol = spec.volume
        if vol is None:
            return
        key = _key(vol)
        with self._locked(key):
            state = self._volumes.get(key)
            if state is None or state.refs[spec.uuid] <= 0:
                log.warning(
                    "RELEASE of an unprepared volume transfer=%s sd=%s vol=%s",
                    spec.transfer_id,
                    vol.sd_id,
                    vol.vol_id,
                )
                return
            with self._lock:
                _drop(state.refs, spec.uuid)
                _drop(state.writers, spec.uuid)
                if spec.uuid not in state.refs:
                    state.transfers.pop(spec.uuid, None)
            log.info(
                "RELEASED transfer=%s sd=%s vol=%s refs=%d",
                spec.transfer_id,
                vol.sd_id,
                vol.vol_id,
                sum(state.refs.values()),
            )
            if state.refs:
                if state.lease is not None and not state.writers:
                    lease, state.lease = state.lease, None
                    self._leases.release(lease)
                return
            with self._lock:
                del self._volumes[key]
            self._teardown(state)

    # What the service asks.

    def tickets_using(self, device: str) -> list[str]:
        """The uuids of the tickets whose volume is device (node or link)."""
        with self._lock:
            return [
                uuid
                for state in self._volumes.values()
                if device in (state.device, state.target, state.url)
                for uuid in state.refs
            ]

    def references(self, volume: Volume) -> int:
        with self._lock:
            state = self._volumes.get(_key(volume))
            return sum(state.refs.values()) if state else 0

    # Prepare and teardown.

    def _setup(self, spec: TicketSpec, wants_lease: bool) -> _Prepared:
        vol, transfer_id = spec.volume, spec.transfer_id
        assert vol is not None
        with ExitStack() as undo:
            lease = None
            if wants_lease:
                lease = self._acquire(vol)
                undo.callback(_quietly, self._leases.release, lease)
            if vol.domain == "file":
                state = _Prepared(vol, url="", target=str(find_volume(self._file_root, vol)))
            else:
                state = self._activate(vol, undo)
            state.lease = lease
            link = self._links.create(vol, state.target)
            undo.callback(_quietly, self._links.remove, vol)
            state.url = link.as_uri()
            if served_by_qemu_nbd(vol):
                state.server = self._serve(vol, state.target, read_only=not spec.allows("write"))
                undo.callback(_quietly, state.server.stop)
                state.url = state.server.url
            if state.device is not None:
                state.watch = self._udev.watch(
                    state.device, lambda node, action: self._device_event(_key(vol), node, action)
                )
            undo.pop_all()
        log.info(
            "SETUP transfer=%s domain=%s sd=%s img=%s vol=%s target=%s",
            transfer_id,
            vol.domain,
            vol.sd_id,
            vol.img_id,
            vol.vol_id,
            state.target,
        )
        return state

    def _acquire(self, vol: Volume) -> Lease:
        assert vol.lease is not None
        lease = Lease(
            lockspace=vol.sd_id, resource=vol.vol_id, path=vol.lease.path, offset=vol.lease.offset
        )
        self._leases.acquire(lease)
        return lease

    def _serve(self, vol: Volume, image: str, *, read_only: bool) -> QemuNbd:
        # sun_path holds 107 bytes: a digest keeps the name short whatever
        # the ids, and distinct per volume.
        name = hashlib.sha256("/".join(_key(vol)).encode()).hexdigest()[:16]
        # The pid file lets the next daemon stop it if this one is killed.
        server = QemuNbd(
            image,
            QEMU_FORMATS[vol.format],
            str(self._nbd_dir / f"{name}.sock"),
            read_only=read_only,
            bitmap=vol.bitmap,
            sd_id=vol.sd_id,
            vol_id=vol.vol_id,
            spawner=self._spawner,
            pid_file=self._nbd_dir / f"{name}.pid",
        )
        server.start()
        return server

    def _activate(self, vol: Volume, undo: ExitStack) -> _Prepared:
        try:
            lv = self._lvm.activate(vol.sd_id, vol.vol_id)
        except VolumeNotFound as e:
            # lvm knows the VG and LV, not the image: name the whole address.
            raise e.at(sd_id=vol.sd_id, img_id=vol.img_id, vol_id=vol.vol_id) from None
        activated = not lv.active
        if activated:
            undo.callback(_quietly, self._lvm.deactivate, vol.sd_id, vol.vol_id)
        # Checked after activation to spare an lvm call on the common path.
        if lv.image is not None and lv.image != vol.img_id:
            raise ImageNotFound(
                sd_id=vol.sd_id,
                img_id=vol.img_id,
                vol_id=vol.vol_id,
                reason=f"volume belongs to image {lv.image}",
            )
        try:
            node = self._udev.wait_for_device(
                lv.path, deadline=self._clock() + self._device_timeout
            )
        except TimeoutError:
            raise VolumeError(
                action="prepare",
                sd_id=vol.sd_id,
                vol_id=vol.vol_id,
                reason=f"device {lv.path} did not appear within {self._device_timeout:g} seconds",
            ) from None
        return _Prepared(vol, url="", target=lv.path, device=node, activated=activated)

    def _teardown(self, state: _Prepared) -> None:
        vol = state.volume
        steps: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        if state.watch is not None:
            steps.append((state.watch.cancel, ()))
        if state.server is not None:
            steps.append((state.server.stop, ()))
        steps.append((self._links.remove, (vol,)))
        if state.activated:
            steps.append((self._lvm.deactivate, (vol.sd_id, vol.vol_id)))
        if state.lease is not None:
            steps.append((self._leases.release, (state.lease,)))
        first: ImageioError | None = None
        for fn, args in steps:
            try:
                fn(*args)
            except ImageioError as e:
                log.error("TEARDOWN step failed sd=%s vol=%s error=%s", vol.sd_id, vol.vol_id, e)
                first = first or e
        if first is not None:
            raise first
        log.info("TEARDOWN sd=%s vol=%s", vol.sd_id, vol.vol_id)

    # Device watch (on the watcher's dispatch thread).

    def _device_event(self, key: Key, node: str, action: str) -> None:
        with self._lock:
            state = self._volumes.get(key)
            users = dict(state.transfers) if state else {}
        if state is None or not users:
            return
        vol = state.volume
        if action == "change" and self._still_active(vol):
            log.info(
                "DEVICE changed, LV still active sd=%s vol=%s node=%s", vol.sd_id, vol.vol_id, node
            )
            return
        log.warning(
            "LOST device=%s action=%s sd=%s vol=%s transfers=%s",
            node,
            action,
            vol.sd_id,
            vol.vol_id,
            ",".join(sorted(users.values())),
        )
        if self.on_lost is None:
            return
        for uuid, transfer_id in users.items():
            try:
                self.on_lost(uuid, node, action)
            except Exception:
                log.exception("LOST callback failed transfer=%s", transfer_id)

    def _still_active(self, vol: Volume) -> bool:
        try:
            return self._lvm.lv_info(vol.sd_id, vol.vol_id).active
        except ImageioError:
            return False

    @contextmanager
    def _locked(self, key: Key) -> Iterator[None]:
        with self._lock:
            lock, users = self._key_locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._key_locks[key]


def served_by_qemu_nbd(vol: Volume) -> bool:
    return vol.nbd or vol.format == "cow" or vol.bitmap is not None


def _serving(vol: Volume) -> str:
    if not served_by_qemu_nbd(vol):
        return "as a file"
    bitmap = f" with bitmap {vol.bitmap}" if vol.bitmap is not None else ""
    return f"by qemu-nbd as {QEMU_FORMATS[vol.format]}{bitmap}"


def _check_shareable(state: _Prepared, spec: TicketSpec) -> None:
    """Refuse a ticket the prepared volume cannot serve as it asks."""
    vol = spec.volume
    assert vol is not None
    reason = None
    if _serving(vol) != _serving(state.volume):
        reason = (
            f"served {_serving(state.volume)} for another ticket; "
            f"this one asks for it {_serving(vol)}"
        )
    elif state.server is not None and state.server.read_only and spec.allows("write"):
        reason = (
            "served read-only by qemu-nbd for a read ticket; add the write "
            "ticket after the read tickets are removed"
        )
    if reason is not None:
        log.warning(
            "PREPARE refused transfer=%s sd=%s vol=%s reason=%s",
            spec.transfer_id,
            vol.sd_id,
            vol.vol_id,
            reason,
        )
        raise VolumeError(action="prepare", sd_id=vol.sd_id, vol_id=vol.vol_id, reason=reason)


def _key(vol: Volume) -> Key:
    return (vol.domain, vol.sd_id, vol.img_id, vol.vol_id)


def _drop(counter: Counter[str], uuid: str) -> None:
    if counter[uuid] > 1:
        counter[uuid] -= 1
    else:
        counter.pop(uuid, None)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    """A rollback step: its failure is logged, the original error wins."""
    try:
        fn(*args)
    except Exception:
        log.exception("ROLLBACK step failed step=%s", getattr(fn, "__qualname__", fn))
