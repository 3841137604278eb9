"""The wiring diagram of the daemon: what is built, from what, in what order.

The control plane (the ``verbs`` package) depends on this package, never
the other way round; it is found through the ``vdsm_imageio.control`` entry
point group and handed the registry, so the data plane can be started and
tested alone and the import graph stays one-way.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from storage.leases import Leases
from storage.lvm import Lvm
from storage.rundir import RunDir
from storage.spawn import Spawner
from storage.udev import DeviceWatcher
from storage.volumes import Volumes

from . import __version__, tls
from .backends import Backend
from .backends.file import open_file
from .backends.hostconn import Connector
from .backends.hostconn import parse_url as parse_host_url
from .backends.http import open_http
from .backends.nbd import is_nbd_url, open_nbd, unix_url
from .backends.nbd import parse_url as parse_nbd_url
from .backends.sectorlock import SectorLocks
from .config import Config, socket_address
from .errors import BackendError, BadRequest, InvalidTicket, TicketNotFound
from .hooks import Hooks, TicketHooks
from .http.checksum import Checksum
from .http.extents import Extents
from .http.images import WRITE_FEATURES, Images
from .http.router import Router, route
from .http.server import Server, tcp_listener, unix_listener
from .http.tickets import TicketServer
from .monitor import PROGRESS, Monitor, MonitorThread
from .registry import Registry
from .tickets import Ticket
from .ticketspec import TicketSpec
from .urlroots import UrlRoots

log = logging.getLogger(__name__)


class ControlPlane(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def publish(self, name: str, params: dict[str, Any]) -> None: ...


ControlFactory = Callable[[Registry, str, Callable[[], dict[str, Any]]], ControlPlane]


class Services:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        control_factory: ControlFactory | None = None,
    ) -> None:
        self.config = config
        self.started = clock()
        self._clock = clock
        hook_env = {"TRANSFER_RECORD": config.hooks.transfer_record}
        self.hooks = Hooks(
            config.hooks.dir,
            timeout=config.hooks.timeout,
            env={k: v for k, v in hook_env.items() if v},
        )
        self.ticket_hooks = TicketHooks(self.hooks, clock)
        self.url_roots = UrlRoots(config.storage.url_roots)
        self.udev = DeviceWatcher(clock=clock)
        self.run_dir = RunDir(Path(config.daemon.run_dir))
        self.volumes = Volumes(
            file_root=Path(config.storage.file_root),
            run_dir=Path(config.daemon.run_dir),
            lvm=Lvm(),
            udev=self.udev,
            leases=Leases(),
            clock=clock,
            on_lost=self._on_volume_lost,
            spawner=Spawner(),
        )
        self.registry = Registry(
            clock=clock,
            remove_timeout=config.daemon.remove_timeout,
            default_inactivity_timeout=config.http.default_inactivity_timeout,
            resolve_url=self._resolve_url,
            release=self.volumes.release,
            guard=self.ticket_hooks.guard,
        )
        self.registry.subscribe(self.ticket_hooks.listener)
        unix = socket_address(config.local.socket) if config.local.enable else None
        self.unix_socket = unix or None
        images = Images(
            self.registry, unix_socket=self.unix_socket, max_json_body=config.http.max_json_body
        )
        extents = Extents(self.registry)
        checksum = Checksum(self.registry)
        router = Router(
            [
                route("images-options", r"/images/(\*)/?", options=images.options),
                route(
                    "images",
                    r"/images/([^/]+)/?",
                    options=images.options,
                    get=images.get,
                    put=images.put,
                    patch=images.patch,
                ),
                route("extents", r"/images/([^/]+)/extents/?", get=extents.get),
                route("checksum", r"/images/([^/]+)/checksum/?", get=checksum.get),
                route(
                    "checksum-algorithms",
                    r"/images/([^/]+)/checksum/algorithms/?",
                    get=checksum.algorithms,
                ),
                route("info", r"/info/?", get=self._info),
                # "/images/" and "/images//extents": a client that lost the
                # ticket id is told so, not that nothing is there.
                route(
                    "images-no-ticket",
                    r"/images//?(?:extents|checksum|checksum/algorithms)?/?",
                    options=_no_ticket_id,
                    get=_no_ticket_id,
                    put=_no_ticket_id,
                    patch=_no_ticket_id,
                ),
            ]
        )
        # One table for the process: connections to one image share its locks.
        self.sector_locks = SectorLocks()
        # Proxy tickets (url https://...) reach their host daemons with it.
        self.connector = host_connector(config)
        self.server = Server(config, router, self._open_backend)
        control = config.control
        ticket_tcp = (control.ticket_host, control.ticket_port) if control.ticket_port else None
        self.ticket_server = (
            TicketServer(config, self.registry, control.ticket_socket or None, tcp=ticket_tcp)
            if control.ticket_socket or ticket_tcp
            else None
        )
        self.tls_port: int | None = None
        factory = control_factory or _control_factory()
        self.control = factory(self.registry, config.control.socket, self.info)
        self.monitor = Monitor(
            self.registry,
            clock=clock,
            progress_interval=config.http.progress_interval,
            expired_ticket_grace=config.daemon.expired_ticket_grace,
        )
        self.monitor_thread = MonitorThread(self.monitor, self._on_monitor_event)

    def start(self) -> None:
        cfg = self.config
        # Before anything can prepare a volume: what a killed daemon left
        # goes first, and never while another daemon uses the directory.
        self.run_dir.lock()
        self.run_dir.clean()
        if cfg.tls.enable:
            ctx = tls.server_context(
                cfg.tls.cert_file,
                cfg.tls.key_file,
                ca_file=cfg.tls.ca_file or None,
                require_client_cert=cfg.tls.enable_client_auth,
            )
            listener = tcp_listener(cfg.tls.host, cfg.tls.port, ctx)
            self.tls_port = listener.port
            self.server.add_listener(listener)
        if self.unix_socket:
            self.server.add_listener(unix_listener(self.unix_socket))
        self.server.start()
        try:
            self.udev.start()
        except OSError as e:
            # File tickets work without it; block volumes cannot be watched.
            log.warning("UDEV monitor unavailable reason=%s", e)
        if self.ticket_server is not None:
            if self.ticket_server.path is not None:
                Path(self.ticket_server.path).parent.mkdir(parents=True, exist_ok=True)
            self.ticket_server.start()
        Path(cfg.control.socket).parent.mkdir(parents=True, exist_ok=True)
        self.control.start()
        self.monitor_thread.start()

    def stop(self) -> None:
        self.monitor_thread.stop()
        self.registry.cancel_all()
        self.server.stop()
        if self.ticket_server is not None:
            self.ticket_server.stop()
        self.control.stop()
        self.udev.stop()
        self.hooks.close(timeout=0.2)
        self.run_dir.unlock()

    def owned_paths(self) -> list[str]:
        """What the daemon created and must still own after dropping privileges."""
        cfg = self.config
        paths = [cfg.control.socket, cfg.daemon.run_dir]
        if self.ticket_server is not None and self.ticket_server.path is not None:
            paths.append(self.ticket_server.path)
        return [p for p in paths if os.path.exists(p)]

    def _on_monitor_event(self, name: str, params: dict[str, Any]) -> None:
        self.publish(name, params)
        # The final progress of a moving ticket: it went idle after moving data.
        if name == PROGRESS and not params["active"]:
            try:
                ticket = self.registry.get(params["uuid"])
            except TicketNotFound:
                return  # removed: after_ticket_remove tells the rest
            if not ticket.canceled:
                self.ticket_hooks.run("after_transfer_idle", ticket)

    def _resolve_url(self, spec: TicketSpec) -> str:
        if spec.volume is not None:
            return self.volumes.prepare(spec)
        return resolve_url(spec, self.url_roots)

    def _open_backend(self, ticket: Ticket) -> Backend:
        # Volume URLs are the storage plane's own paths, not the caller's.
        roots = None if ticket.spec.volume else self.url_roots
        return open_backend(ticket, roots, locks=self.sector_locks, connector=self.connector)

    def _on_volume_lost(self, uuid: str, device: str, action: str) -> None:
        """The device under a live ticket went away: stop its requests now."""
        try:
            ticket = self.registry.get(uuid)
        except TicketNotFound:
            return
        log.warning(
            "VOLUME lost transfer=%s device=%s action=%s", ticket.transfer_id, device, action
        )
        ticket.cancel()
        self.publish("Volume.lost", {"uuid": uuid, "device": device, "action": action})

    def publish(self, name: str, params: dict[str, Any]) -> None:
        """Notify control-channel subscribers (Volume.lost comes from storage)."""
        self.control.publish(name, params)

    @property
    def data_url(self) -> str | None:
        if self.tls_port is None:
            return None
        host = self.config.tls.host or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.tls_port}/images/"

    @property
    def tickets_url(self) -> str | None:
        """The HTTP ticket API on TCP, when it listens there."""
        if self.ticket_server is None or self.ticket_server.port is None:
            return None
        host = self.config.control.ticket_host or "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.ticket_server.port}/tickets/"

    def info(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "features": WRITE_FEATURES,
            "data_url": self.data_url,
            "unix_socket": self.unix_socket,
            "uptime": int(self._clock() - self.started),
            "tickets": len(self.registry.list()),
            "connections": self.server.connections(),
        }

    def _info(self, conn: Any, req: Any) -> None:
        conn.reply_json({"version": __version__})


def _no_ticket_id(conn: Any, req: Any) -> None:
    raise BadRequest(field="path", reason="the ticket id is missing (/images/<ticket>)")


def resolve_url(spec: TicketSpec, roots: UrlRoots) -> str:
    """The URL a url ticket serves: its path resolved and confined to roots
    (vdsm_imageio.urlroots), checked to name something usable."""
    assert spec.url is not None
    parts = urlsplit(spec.url)
    if is_nbd_url(spec.url):
        return _resolve_nbd(spec.url, roots)
    if parts.scheme == "https":
        # A proxy ticket: the host daemon confines its own storage.
        try:
            parse_host_url(spec.url)
        except ValueError as e:
            raise InvalidTicket(field="url", reason=str(e)) from None
        return spec.url
    if parts.scheme != "file":
        raise InvalidTicket(
            field="url", reason=f"{parts.scheme} URLs are not supported by this service"
        )
    path = roots.resolve(unquote(parts.path))
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidTicket(field="url", reason=f"cannot use {path}: {e.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidTicket(field="url", reason=f"{path} is not a file or block device")
    return Path(path).as_uri()


def _resolve_nbd(url: str, roots: UrlRoots) -> str:
    try:
        path, export = parse_nbd_url(url)
    except ValueError as e:
        raise InvalidTicket(field="url", reason=str(e)) from None
    path = roots.resolve(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidTicket(field="url", reason=f"cannot use {path}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidTicket(field="url", reason=f"{path} is not a unix socket")
    return unix_url(path, export, like=url)


def open_backend(
    ticket: Ticket, roots: UrlRoots | None, *, locks: SectorLocks, connector: Connector
) -> Backend:
    """Open the ticket's storage; with roots, refuse a path moved since the add.
    locks is the process's sector lock table (vdsm_imageio.backends.sectorlock),
    connector how proxy tickets reach their host daemons."""
    parts = urlsplit(ticket.url)
    mode = "rw" if ticket.spec.allows("write") else "r"
    if parts.scheme == "https":
        return open_http(ticket.url, mode=mode, connector=connector, transfer_id=ticket.transfer_id)
    if is_nbd_url(ticket.url):
        if roots is not None:
            roots.check_unmoved(parse_nbd_url(ticket.url)[0])
        return open_nbd(ticket.url, mode=mode, sparse=ticket.spec.sparse, dirty=ticket.spec.dirty)
    if parts.scheme != "file":
        raise BackendError(reason=f"no backend for {parts.scheme} URLs")
    path = unquote(parts.path)
    backend = open_file(path, mode=mode, sparse=ticket.spec.sparse, locks=locks)
    if roots is not None:
        try:
            roots.check_opened(backend.fileno(), path)
        except BaseException:
            backend.close()
            raise
    return backend


def host_connector(config: Config) -> Connector:
    """[backend_http]; without a CA of its own, the CA of [tls] (one oVirt CA
    signs the engine's and the hosts' certificates)."""
    cfg = config.backend_http
    return Connector(
        ca_file=cfg.ca_file or config.tls.ca_file or None,
        cert_file=cfg.cert_file or None,
        key_file=cfg.key_file or None,
        connect_timeout=cfg.connect_timeout,
        timeout=cfg.timeout,
        unix_socket=cfg.unix_socket,
    )


def _control_factory() -> ControlFactory:
    found = list(entry_points(group="vdsm_imageio.control"))
    if not found:
        raise RuntimeError("no control plane installed (entry point vdsm_imageio.control)")
    factory: ControlFactory = found[0].load()
    return factory
