"""The ``Service`` namespace: what this daemon is and how busy it is.

The values come from an injected provider so this module does not depend
on the HTTP server or the registry; the wiring supplies a callable that
reads them at call time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .errors import Method, verb


@dataclass(frozen=True)
class ServiceInfo:
    version: str
    features: list[str]
    data_url: str
    unix_socket: str | None
    uptime: int
    tickets: int
    connections: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


InfoProvider = Callable[[], ServiceInfo | Mapping[str, Any]]


class ServiceVerbs:
    def __init__(self, info: InfoProvider) -> None:
        self._info = info

    def info(self) -> dict[str, Any]:
        value = self._info()
        # A mapping with a missing or extra key is a wiring bug: TypeError
        # becomes -32603 with the traceback in the log.
        if not isinstance(value, ServiceInfo):
            value = ServiceInfo(**value)
        return value.to_json()


def service_methods(info: InfoProvider) -> dict[str, Method]:
    verbs = ServiceVerbs(info)
    return {"Service.info": verb(verbs.info, name="Service.info")}
