"""The JSON-RPC control surface of vdsm-imageio.

One module per namespace (``ticket``, ``host``, ``service``, ``events``),
the error-code table (``errors``), the wire format (``protocol``) and the
socket server (``server``). ``create_control`` is the wiring of the
namespaces onto one control socket.
"""

from __future__ import annotations

from typing import Any

from vdsm_imageio.registry import Registry

from .events import EventHub, event_methods
from .host import host_methods
from .protocol import Methods
from .server import ControlServer
from .service import InfoProvider, service_methods
from .ticket import ticket_methods

__all__ = ["Control", "ControlServer", "create_control"]


class Control(ControlServer):
    """The control socket and the subscribers of its events."""

    def __init__(self, path: str, methods: Methods, mode: int, events: EventHub) -> None:
        super().__init__(path, methods, mode)
        self.events = events

    def publish(self, name: str, params: dict[str, Any]) -> None:
        """Notify subscribers; never blocks (the data plane calls it)."""
        self.events.publish(name, params)

    def stop(self) -> None:
        # Closing the connections first ends the subscriptions' sends.
        super().stop()
        self.events.stop()


def create_control(
    registry: Registry,
    socket_path: str,
    info: InfoProvider,
    mode: int = 0o660,
) -> Control:
    events = EventHub()
    methods = {
        **ticket_methods(registry),
        **host_methods(registry),
        **service_methods(info),
        **event_methods(events),
    }
    return Control(socket_path, methods, mode, events)
