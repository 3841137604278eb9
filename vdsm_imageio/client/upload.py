"""``vdsm-imageio upload FILE TRANSFER_URL``.

The source's extents decide what is sent (``client.plan``): data as PUT
``?flush=n``, zeros as PATCH zero (or nothing on a disk known to be zero),
and the disk past the source's end is zeroed. Each worker owns one
connection; ranges enter the journal after a PATCH flush on the
connection that wrote them. After the last flush the journal is removed
and, when the server computes checksums, the disk is verified.

A qcow2 (NBD) source sent over the daemon's unix socket is spliced: the
replies of the local qemu-nbd go from its socket through a pipe into the
daemon's, and the data never enters this process (``zerocopy``). Over
TLS, and from a raw file, it is read into a buffer and sent from there.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from . import journal as journalmod
from . import local, plan
from .errors import DoesNotFit, ReadOnlyTransfer, UsageError
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
    sent: int
    checksum: str | None


class UploadHandler(Ends[ImageConnection, Handle]):
    """One worker's connection and source handle."""

    def __init__(
        self,
        conn: ImageConnection,
        src: Handle,
        buffer_size: int,
        progress: Callable[[int], None],
        *,
        can_flush: bool,
    ) -> None:
        super().__init__(conn, src)
        # Spliced when both ends allow: no copy of the data in this process.
        self._fills = src.splice_fills() if conn.can_splice else None
        self._buf = src.buffer(buffer_size) if self._fills is None else memoryview(b"")
        self._progress = progress
        self._can_flush = can_flush
        self.sent = 0

    def run(self, item: Item) -> None:
        if item.op is Op.COPY and self._fills is not None:
            self._conn.put_spliced(item.start, item.length, self._fills, progress=self._sent)
        elif item.op is Op.COPY:
            self._conn.put(item.start, item.length, self._buf, self._read, progress=self._sent)
        else:
            self._conn.zero(item.start, item.length)
            self._progress(item.length)

    def _read(self, offset: int, buf: memoryview) -> int:
        return self._local.readinto(offset, buf)

    def _sent(self, n: int) -> None:
        self.sent += n
        self._progress(n)

    def flush(self) -> None:
        if self._can_flush:
            self._conn.flush()


def upload(
    source: str,
    url: str,
    settings: Settings,
    *,
    fmt: str | None = None,
    disk_format: str = "raw",
    target_is_zero: bool = False,
) -> Result:
    if disk_format not in ("raw", "qcow2"):
        raise UsageError(reason=f"--disk-format must be raw or qcow2, not {disk_format!r}")
    info = local.inspect(source)
    # To a qcow2 disk the file's own bytes go, whatever its format.
    read_as = "raw" if disk_format == "qcow2" else (fmt or info.format)
    with Session(url, settings) as session:
        if not session.options.writable:
            raise ReadOnlyTransfer()
        disk = session.disk_size()
        with LocalImage(source, read_as, writable=False) as image:
            if image.size > disk:
                what = "" if read_as == "raw" else " of guest data"
                raise DoesNotFit(size=image.size, what=what, disk=disk)
            stat = os.stat(source)
            identity: dict[str, str | int | bool | None] = {
                "op": "upload",
                "source": os.path.realpath(source),
                "source_size": stat.st_size,
                "source_mtime_ns": stat.st_mtime_ns,
                "read_as": read_as,
                "url": journalmod.url_digest(url),
                "disk_size": disk,
                "target_is_zero": target_is_zero,
            }
            state_dir = settings.state_dir or journalmod.default_state_dir()
            path = journalmod.upload_path(state_dir, source, url)
            if settings.resume and path.exists():
                journal, done = Journal.resume(path, identity)
            else:
                if settings.resume:
                    log.warning("RESUME no journal of this upload, starting from the beginning")
                journal, done = Journal.create(path, identity), Ranges()
            try:
                sent = _transfer(session, image, disk, done, journal, target_is_zero)
            finally:
                journal.close()
            journal.remove()
            digest = None
            if session.should_verify():
                digest = session.verify(image, size=disk, where="uploaded")
    return Result(size=disk, sent=sent, checksum=digest)


def _transfer(
    session: Session,
    image: LocalImage,
    disk: int,
    done: Ranges,
    journal: Journal,
    target_is_zero: bool,
) -> int:
    settings = session.settings
    with image.open() as h:
        extents = h.zero_extents()
    items = itertools.chain(
        plan.upload(extents, target_is_zero=target_is_zero),
        plan.disk_tail(image.size, disk, target_is_zero=target_is_zero),
    )
    can_flush = "flush" in session.options.features

    def make(conn: ImageConnection, step: int) -> UploadHandler:
        return UploadHandler(
            conn,
            image.open(),
            min(settings.buffer_size, step),
            settings.progress.update,
            can_flush=can_flush,
        )

    handlers = session.transfer(
        "upload",
        make,
        items,
        size=disk,
        done=done,
        journal=journal,
        workers=session.workers(session.options.max_writers),
    )
    return sum(h.sent for h in handlers)
