"""``vdsm-imageio download TRANSFER_URL FILE``.

The server's extents decide what is read (``client.plan``); holes are left
as holes in a new target. A raw target is written directly; a qcow2 target
is created with ``qemu-img create`` (optionally on a backing file) and
written through a local qemu-nbd. Ranges enter the journal, next to the
target, after a flush of the local image. An existing target is never
overwritten by accident: ``--overwrite`` replaces it, ``--resume``
continues it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..backends import DirtyExtent, ZeroExtent
from . import journal as journalmod
from . import local, plan
from .errors import ProtocolError, TargetExists, UsageError
from .images import ImageConnection
from .journal import Journal
from .local import Handle, LocalImage
from .plan import Item, Op
from .ranges import Ranges
from .session import Session, Settings
from .workers import Ends

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    size: int
    received: int
    checksum: str | None


class DownloadHandler(Ends[ImageConnection, Handle]):
    """One worker's connection and target handle."""

    def __init__(
        self, conn: ImageConnection, dst: Handle, buffer_size: int, progress: Callable[[int], None]
    ) -> None:
        super().__init__(conn, dst)
        self._buf = dst.buffer(buffer_size)
        self._progress = progress
        self.received = 0

    def run(self, item: Item) -> None:
        if item.op is Op.COPY:
            self._conn.get(item.start, item.length, self._buf, self._write)
        else:
            self._local.zero(item.start, item.length)
            self._progress(item.length)

    def _write(self, offset: int, buf: memoryview) -> None:
        self._local.write(offset, buf)
        self.received += len(buf)
        self._progress(len(buf))

    def flush(self) -> None:
        self._local.flush()


def download(
    url: str,
    target: str,
    settings: Settings,
    *,
    fmt: str = "raw",
    backing: str | None = None,
    incremental: bool = False,
    overwrite: bool = False,
) -> Result:
    if fmt not in local.FORMATS:
        raise UsageError(reason=f"--format must be raw or qcow2, not {fmt!r}")
    if (backing or incremental) and fmt != "qcow2":
        raise UsageError(reason="--backing-file and --incremental need --format qcow2")
    if backing and not os.path.exists(backing):
        raise UsageError(reason=f"the backing file {backing} does not exist")
    with Session(url, settings) as session:
        extents = _extents(session, incremental)
        size = extents[-1].start + extents[-1].length if extents else 0
        identity: dict[str, str | int | bool | None] = {
            "op": "download",
            "url": journalmod.url_digest(url),
            "size": size,
            "format": fmt,
            "backing": os.path.realpath(backing) if backing else None,
            "incremental": incremental,
        }
        path = journalmod.download_path(target)
        journal, done = _open_journal(path, target, identity, settings.resume, overwrite)
        try:
            if not done:
                local.create(target, fmt, size, backing=backing)
            with LocalImage(target, fmt, writable=True) as image:
                if image.size != size:
                    raise UsageError(
                        reason=f"{target} has {image.size} bytes, the image {size}: "
                        "it is not this download's target; remove it to start over"
                    )
                if incremental:
                    items = plan.incremental(e for e in extents if isinstance(e, DirtyExtent))
                else:
                    items = plan.download(
                        (e for e in extents if isinstance(e, ZeroExtent)),
                        backing=backing is not None,
                    )
                received = _transfer(session, image, size, items, done, journal)
                journal.remove()
                digest = None
                if session.should_verify():
                    digest = session.verify(image, size=size, where="downloaded")
        finally:
            journal.close()
    return Result(size=size, received=received, checksum=digest)


def _extents(session: Session, incremental: bool) -> Sequence[ZeroExtent | DirtyExtent]:
    """The server's extents, checked to cover the image."""
    found: Sequence[ZeroExtent | DirtyExtent]
    if "extents" not in session.options.features:
        if incremental:
            raise UsageError(reason="the server reports no extents: --incremental is impossible")
        size = session.control.size_by_range()
        return [ZeroExtent(0, size, False, False)] if size else []
    found = session.control.dirty_extents() if incremental else session.control.zero_extents()
    try:
        plan.check_extents(found, found[-1].start + found[-1].length if found else 0)
    except ValueError as e:
        raise ProtocolError(server=session.endpoint.url.server, reason=str(e)) from None
    return found


def _open_journal(
    path: Path,
    target: str,
    identity: dict[str, str | int | bool | None],
    resume: bool,
    overwrite: bool,
) -> tuple[Journal, Ranges]:
    exists = os.path.lexists(target)
    if resume and exists and path.exists():
        return Journal.resume(path, identity)
    if resume:
        log.warning("RESUME no journal of this download, starting from the beginning")
    if exists and not overwrite and not resume:
        if path.exists():
            raise TargetExists(
                path=target,
                what=", an interrupted download",
                how="continue it with --resume, or pass --overwrite to start over",
            )
        raise TargetExists(path=target, what="", how="remove it or pass --overwrite")
    return Journal.create(path, identity), Ranges()


def _transfer(
    session: Session,
    image: LocalImage,
    size: int,
    items: Iterable[Item],
    done: Ranges,
    journal: Journal,
) -> int:
    settings = session.settings

    def make(conn: ImageConnection, step: int) -> DownloadHandler:
        return DownloadHandler(
            conn, image.open(), min(settings.buffer_size, step), settings.progress.update
        )

    handlers = session.transfer(
        "download",
        make,
        items,
        size=size,
        done=done,
        journal=journal,
        workers=session.workers(session.options.max_readers),
    )
    return sum(h.received for h in handlers)
