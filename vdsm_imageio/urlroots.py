"""Where a url ticket may point: ``[storage] url_roots``.

vdsm is trusted, but the service runs as root, so a ticket naming
``/etc/shadow`` must not turn into a way to read it. Rules:

- A ``file://`` path or the socket path of an NBD URL, in either form
  (``nbd:unix:/path``, ``nbd+unix:///NAME?socket=/path``: both parsed by
  ``backends.nbd.parse_url``), is resolved when the ticket is added: every
  symlink and ``..`` is followed (os.path.realpath), and the result must
  lie under one of the roots (resolved the same way, so a root that is
  itself a link works). The check comes before any stat, so
  a refused ticket does not tell whether the path exists.
- The ticket is served through the resolved path, never the given one: a
  symlink swapped after the add is not followed.
- A file is checked again once opened, on the descriptor itself
  (``/proc/self/fd``): it must still be the resolved path, so a directory
  component swapped for a link between the add and the open is refused
  without a window between check and use.
- An NBD socket cannot be checked that way (the client library connects by
  path): it is resolved again just before connecting and must not have
  moved. Only someone able to write a directory under a root could race
  that check, and such a one can already change the images themselves.

Volume tickets are not checked here: the storage plane builds their paths
from validated ids under ``[storage] file_root`` or LVM.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from .errors import Forbidden, InvalidTicket

log = logging.getLogger(__name__)


def within(path: str, root: str) -> bool:
    """Whether the absolute, normalized path is root or lies under it."""
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root.rstrip("/") + "/")


class UrlRoots:
    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = tuple(roots)

    def resolve(self, path: str) -> str:
        """The real path of path, if it lies under a root; else InvalidTicket."""
        try:
            real = os.path.realpath(path)
        except (ValueError, OSError) as e:
            # ValueError: an embedded NUL; OSError: a symlink loop.
            raise InvalidTicket(field="url", reason=f"cannot resolve the path: {e}") from None
        if not any(within(real, os.path.realpath(root)) for root in self.roots):
            where = ", ".join(self.roots) or "nothing (empty)"
            shown = path if real == path else f"{path} (resolves to {real})"
            raise InvalidTicket(
                field="url", reason=f"{shown} is outside [storage] url_roots: {where}"
            )
        return real

    def check_opened(self, fd: int, path: str) -> None:
        """Refuse an open file that is not the resolved path the ticket holds."""
        try:
            actual = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as e:
            actual = f"unknown ({e.strerror})"
        if actual != path:
            self._moved(path, actual)

    def check_unmoved(self, path: str) -> None:
        """Refuse a path that no longer resolves to itself (see the module doc)."""
        actual = os.path.realpath(path)
        if actual != path:
            self._moved(path, actual)

    def _moved(self, path: str, actual: str) -> None:
        log.warning(
            "REFUSED open path=%s now=%s reason=moved since the ticket was added", path, actual
        )
        raise Forbidden(reason="The image of this transfer moved since its ticket was added")
