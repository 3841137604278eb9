"""The wiring diagram of the daemon: what is built, from what, in what order.

The control plane (the ``verbs`` package) depends on this package, never
the other way round; it is found through the ``vdsm_imageio.control`` entry
point group and handed the registry, so the data plane can be started and
tested alone and the import graph stays one-way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from storage.leases import Leases
from storage.lvm import Lvm
from storage.rundir import RunDir
from storage.spawn import Spawner
from storage.udev import DeviceWatcher
from storage.volumes import Volumes

from . import __version__, ktls, tls
from .backends import opener
from .backends.hostconn import Connector
from .backends.sectorlock import SectorLocks
from .config import Config, socket_address
from .errors import BadRequest, TicketNotFound
from .hooks import Hooks, TicketHooks
from .http.checksum import Checksum
from .http.exchange import Exchange
from .http.extents import Extents
from .http.images import WRITE_FEATURES, Images
from .http.listeners import tcp_listener, unix_listener
from .http.router import Router, route
from .http.server import Server
from .http.tickets import TicketServer
from .monitor import PROGRESS, Monitor, MonitorThread
from .pipeline import BufferPool
from .registry import Registry
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
        # Every connection's I/O buffers come from here (vdsm_imageio.pipeline).
        pool = BufferPool.sized(config.http.buffer_size, config.http.buffer_pool_bytes)
        images = Images(self.registry, http=config.http, pool=pool, unix_socket=self.unix_socket)
        extents = Extents(self.registry)
        checksum = Checksum(self.registry, http=config.http, pool=pool)
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
        self.server = Server(
            config,
            router,
            partial(
                opener.open_ticket,
                roots=self.url_roots,
                locks=self.sector_locks,
                connector=self.connector,
            ),
        )
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
            offload = ktls.probe()
            ktls.enable(ctx, offload)
            log.info("TLS kernel offload %s", ktls.describe(offload))
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
        return opener.resolve_url(spec, self.url_roots)

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

    def _info(self, ex: Exchange) -> None:
        ex.response.reply_json({"version": __version__})


def _no_ticket_id(ex: Exchange) -> None:
    raise BadRequest(field="path", reason="the ticket id is missing (/images/<ticket>)")


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
