"""What a ticket's URL names: resolved when the ticket is added, opened per connection.

Two steps, with ``[storage] url_roots`` checked at each
(``vdsm_imageio.urlroots`` states the rules):

- ``resolve_url`` runs once, when a url ticket is added: the path is
  resolved and confined to the roots, and must name something a backend
  can serve. The ticket keeps the resolved URL.
- ``open_ticket`` runs when a connection first needs the ticket's storage:
  it picks the backend by the URL's scheme and refuses a path that moved
  since the add.

Volume tickets skip the roots: their paths are the storage plane's own.
A proxy ticket's ``https`` URL names an image on another daemon, which
confines its own storage: it is only checked to be a transfer URL.
Adding a backend means a scheme here and the backend protocol
(``vdsm_imageio.backends``); nothing in the HTTP handlers changes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import BackendError, InvalidTicket
from ..tickets import Ticket
from ..ticketspec import TicketSpec
from ..urlroots import UrlRoots
from . import Backend
from .file import open_file
from .hostconn import Connector
from .hostconn import parse_url as parse_host_url
from .http import open_http
from .nbd import is_nbd_url, open_nbd, parse_url, unix_url
from .sectorlock import SectorLocks


def resolve_url(spec: TicketSpec, roots: UrlRoots) -> str:
    """The URL a url ticket serves: its path resolved and confined to roots,
    checked to name something usable."""
    assert spec.url is not None
    parts = urlsplit(spec.url)
    if is_nbd_url(spec.url):
        return _resolve_nbd(spec.url, roots)
    if parts.scheme == "https":
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
    st = _stat(path)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidTicket(field="url", reason=f"{path} is not a file or block device")
    return Path(path).as_uri()


def _resolve_nbd(url: str, roots: UrlRoots) -> str:
    try:
        path, export = parse_url(url)
    except ValueError as e:
        raise InvalidTicket(field="url", reason=str(e)) from None
    path = roots.resolve(path)
    if not stat.S_ISSOCK(_stat(path).st_mode):
        raise InvalidTicket(field="url", reason=f"{path} is not a unix socket")
    return unix_url(path, export, like=url)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise InvalidTicket(field="url", reason=f"cannot use {path}: {e.strerror}") from None


def open_ticket(
    ticket: Ticket, *, roots: UrlRoots, locks: SectorLocks, connector: Connector
) -> Backend:
    """Open the ticket's storage, read-write if the ticket allows writing.

    locks is the process's sector lock table (``backends.sectorlock``),
    connector how proxy tickets reach their host daemons (``backends.hostconn``).
    """
    spec = ticket.spec
    mode = "rw" if spec.allows("write") else "r"
    if urlsplit(ticket.url).scheme == "https":
        return open_http(ticket.url, mode=mode, connector=connector, transfer_id=ticket.transfer_id)
    return open_url(
        ticket.url,
        mode=mode,
        sparse=spec.sparse,
        dirty=spec.dirty,
        # Volume URLs are the storage plane's own paths, not the caller's.
        roots=None if spec.volume else roots,
        locks=locks,
    )


def open_url(
    url: str, *, mode: str, sparse: bool, dirty: bool, roots: UrlRoots | None, locks: SectorLocks
) -> Backend:
    """The backend for url; with roots, refuse a path moved since it was resolved."""
    parts = urlsplit(url)
    if is_nbd_url(url):
        if roots is not None:
            roots.check_unmoved(parse_url(url)[0])
        return open_nbd(url, mode=mode, sparse=sparse, dirty=dirty)
    if parts.scheme != "file":
        raise BackendError(reason=f"no backend for {parts.scheme} URLs")
    path = unquote(parts.path)
    backend = open_file(path, mode=mode, sparse=sparse, locks=locks)
    if roots is not None:
        try:
            roots.check_opened(backend.fileno(), path)
        except BaseException:
            backend.close()
            raise
    return backend
