"""Routes: a table from path patterns and methods to handlers.

A handler is called with the exchange (``http.exchange``) and the groups
its pattern captured from the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MethodNotAllowed, NotFound
from .exchange import Exchange

Handler = Callable[..., None]


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: dict[str, Handler]


def route(name: str, pattern: str, **methods: Handler) -> Route:
    return Route(name, re.compile(pattern), {m.upper(): h for m, h in methods.items()})


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self._routes = routes

    def dispatch(self, ex: Exchange) -> None:
        req = ex.request
        for r in self._routes:
            m = r.pattern.fullmatch(req.path)
            if m is None:
                continue
            handler = r.methods.get(req.method)
            if handler is None:
                raise MethodNotAllowed(method=req.method, path=r.name, allow=", ".join(r.methods))
            handler(ex, *m.groups())
            return
        # The path may hold a ticket id: name only its first segment.
        first = req.path.lstrip("/").split("/", 1)[0]
        raise NotFound(reason=f"No resource at /{first}")

    def route_name(self, path: str) -> str:
        for r in self._routes:
            if r.pattern.fullmatch(path):
                return r.name
        return "unknown"
