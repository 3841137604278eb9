"""What every transfer does around its data: connect, learn the ticket,
size the disk, verify the result.

``Settings`` is the command line's choice of how to transfer; ``open``
connects to the transfer URL, takes the unix socket when the daemon is on
this host, and reads OPTIONS once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import plan
from .errors import ChecksumMismatch, ClientError, ProtocolError, Unsupported
from .http import Endpoint, parse_url
from .images import ImageConnection, Options
from .journal import Journal
from .local import LocalImage
from .plan import Item
from .progress import Progress, Quiet
from .ranges import Ranges
from .workers import Handler, Pool

log = logging.getLogger(__name__)

H = TypeVar("H", bound=Handler)

MiB = 1024**2
DEFAULT_WORKERS = 4
DEFAULT_BUFFER_SIZE = 4 * MiB


@dataclass(frozen=True)
class Settings:
    cafile: str | None = None
    insecure: bool = False
    workers: int = DEFAULT_WORKERS
    buffer_size: int = DEFAULT_BUFFER_SIZE
    unix_socket: bool = True
    # None: verify when the server advertises checksums.
    verify: bool | None = None
    resume: bool = False
    state_dir: Path | None = None
    progress: Progress = field(default_factory=Quiet)


class Session:
    """A transfer URL, connected; ``control`` serves the metadata requests."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.endpoint = Endpoint(parse_url(url), cafile=settings.cafile, insecure=settings.insecure)
        self.control = ImageConnection(self.endpoint)
        try:
            self.options = self.control.options()
            if settings.unix_socket:
                self._try_unix_socket()
        except BaseException:
            self.control.close()
            raise
        log.info(
            "CONNECTED server=%s transport=%s features=%s max_readers=%d max_writers=%d",
            self.endpoint.url.server,
            self.endpoint.transport,
            ",".join(sorted(self.options.features)),
            self.options.max_readers,
            self.options.max_writers,
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.control.close()

    def _try_unix_socket(self) -> None:
        tcp = self.control
        if not self.endpoint.use_unix_socket(self.options.unix_socket, tcp.connection):
            return
        try:
            unix = ImageConnection(self.endpoint)
            self.options = _with_socket(unix.options(), self.options)
        except ClientError as e:
            log.warning("UNIX socket refused the transfer, staying on TCP reason=%s", e)
            self.endpoint.unix_socket = None
            return
        tcp.close()
        self.control = unix

    def disk_size(self) -> int:
        if "extents" in self.options.features:
            extents = self.control.zero_extents()
            if not extents:
                raise ProtocolError(server=self.endpoint.url.server, reason="no extents")
            return extents[-1].start + extents[-1].length
        return self.control.size_by_range()

    def workers(self, limit: int) -> int:
        """Workers for a transfer: as asked, never more than the server allows."""
        return max(1, min(self.settings.workers, limit))

    def transfer(
        self,
        name: str,
        make: Callable[[ImageConnection, int], H],
        items: Iterable[Item],
        *,
        size: int,
        done: Ranges,
        journal: Journal,
        workers: int,
    ) -> list[H]:
        """Run the items not done on workers, each with its own connection;
        make(conn, copy_size) builds one worker's handler."""
        step = plan.copy_size(size, workers)
        handlers: list[H] = []
        progress = self.settings.progress
        try:
            for _ in range(workers):
                conn = ImageConnection(self.endpoint)
                try:
                    handlers.append(make(conn, step))
                except BaseException:
                    conn.close()
                    raise
            already = done.clipped(size).total
            log.info(
                "%s size=%d done=%d workers=%d transport=%s",
                name.upper(),
                size,
                already,
                workers,
                self.endpoint.transport,
            )
            progress.start(size, already)
            pool: list[Handler] = list(handlers)
            Pool(pool, commit=journal.commit, progress=progress.update).run(
                plan.remaining(items, done, max_copy=step)
            )
        finally:
            progress.close()
            for handler in handlers:
                handler.close()
        return handlers

    def should_verify(self) -> bool:
        wanted = self.settings.verify
        if wanted is None:
            return "checksum" in self.options.features
        if wanted and "checksum" not in self.options.features:
            raise Unsupported(
                what="compute checksums",
                message="OPTIONS lists no checksum feature",
                how="run without --verify",
            )
        return wanted

    def verify(self, image: LocalImage, *, size: int, where: str) -> str:
        """Compare the server's checksum with the local image's; the digest."""
        from . import checksum

        remote: dict[str, Any] = {}
        failure: list[BaseException] = []

        def server() -> None:
            try:
                with ImageConnection(self.endpoint) as conn:
                    remote.update(
                        conn.checksum(checksum.DEFAULT_ALGORITHM, checksum.DEFAULT_BLOCK_SIZE)
                    )
            except BaseException as e:
                failure.append(e)

        # The server hashes its copy while we hash ours.
        t = threading.Thread(target=server, name="checksum/server", daemon=True)
        t.start()
        local = checksum.compute(image, size=size, workers=self.settings.workers)
        while t.is_alive():
            t.join(0.1)
        if failure:
            raise failure[0]
        if remote["checksum"] != local:
            raise ChecksumMismatch(
                where=where,
                algorithm=remote.get("algorithm", checksum.DEFAULT_ALGORITHM),
                local=local,
                remote=remote["checksum"],
            )
        log.info("VERIFIED algorithm=%s checksum=%s", checksum.DEFAULT_ALGORITHM, local)
        return local


def _with_socket(new: Options, old: Options) -> Options:
    # The unix socket's OPTIONS may not repeat the socket name.
    return (
        new
        if new.unix_socket
        else Options(new.features, new.writable, old.unix_socket, new.max_readers, new.max_writers)
    )
