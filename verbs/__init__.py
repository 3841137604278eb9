"""The JSON-RPC control surface of vdsm-imageio.

One module per namespace (``ticket``, ``service``), the error-code table
(``errors``), the wire format (``protocol``) and the socket server
(``server``). ``create_control`` is the wiring of the namespaces onto one
control socket.
"""

from __future__ import annotations

from vdsm_imageio.tickets import Registry

from .server import ControlServer
from .service import InfoProvider, service_methods
from .ticket import ticket_methods

__all__ = ["ControlServer", "create_control"]


def create_control(
    registry: Registry,
    socket_path: str,
    info: InfoProvider,
    mode: int = 0o660,
) -> ControlServer:
    methods = {**ticket_methods(registry), **service_methods(info)}
    return ControlServer(socket_path, methods, mode)
