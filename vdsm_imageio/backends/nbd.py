"""The nbd backend: one libnbd connection to qemu-nbd or another NBD server.

Each backend owns one NBD connection, as each HTTP connection owns one
backend, so several clients of a transfer use several NBD connections (the
server must allow it: qemu-nbd ``--shared``). Requests are split at the
server's maximum request size; alignment is the server's business (qemu-nbd
advertises a minimum block size of 1 and does its own read-modify-write; a
server asking for more gets unaligned requests refused by libnbd).

Extents come from NBD block status (NBD protocol, "Metadata querying"):
``base:allocation`` says where the image reads as zeros; qemu's
``qemu:allocation-depth`` tells a cluster unallocated in a qcow2 (a hole,
depth 0, or data of a backing file, depth >= 2) from allocated zeros (depth
1), which ``base:allocation`` reports alike; ``qemu:dirty-bitmap:NAME``
marks the blocks written since the bitmap was created. The server may
answer a request for less than asked, and each context with different
boundaries: the replies are intersected and the loop goes on from where the
shortest one ends.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import nbd

from vdsm_imageio import directio
from vdsm_imageio.backends import NO_SPACE_ERRNOS, DirtyExtent, ZeroExtent
from vdsm_imageio.backends.nbdstatus import (
    ALLOCATION,
    BITMAP_PREFIX,
    DEPTH,
    Run,
    dirty_extent,
    intersect,
    merge,
    runs,
    zero_extent,
)
from vdsm_imageio.backends.nbdwire import WireReader
from vdsm_imageio.errors import BackendError, StorageFull, StorageReadOnly, UnsupportedContext

log = logging.getLogger(__name__)

# NBD spec: without an advertised maximum, requests up to 32 MiB are safe;
# libnbd refuses reads and writes over 64 MiB.
DEFAULT_MAX_IO = 32 * 1024**2
LIBNBD_MAX_IO = 64 * 1024**2
# Zero and block status lengths are 32-bit on the wire.
MAX_ZERO = 1024**3
MAX_STATUS = 1024**3

_UNSUPPORTED = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


# qemu's form, and the NBD URI standard's (NetworkBlockDevice/nbd doc/uri.md).
UNIX_PREFIX = "nbd:unix:"
URI_PREFIX = "nbd+unix://"
FORMS = "nbd:unix:/path[:exportname=NAME] or nbd+unix:///NAME?socket=/path"


def is_nbd_url(url: str) -> bool:
    return url.startswith((UNIX_PREFIX, URI_PREFIX))


def parse_url(url: str) -> tuple[str, str]:
    """Socket path and export name of an NBD URL over a unix socket: qemu's
    ``nbd:unix:/path[:exportname=NAME]`` or the standard URI
    ``nbd+unix:///NAME?socket=/path``; ValueError for anything else."""
    if url.startswith(UNIX_PREFIX + "/"):
        path, sep, name = url[len(UNIX_PREFIX) :].partition(":exportname=")
        return path, name if sep else ""
    if url.startswith(URI_PREFIX):
        return _parse_uri(url)
    raise ValueError(f"expected {FORMS}, got {url!r}")


def _parse_uri(url: str) -> tuple[str, str]:
    """The NBD URI standard, strictly: no host (the socket names the
    server), the export name is the path after its first "/", and the
    query holds exactly one ``socket``, an absolute path. Both are
    percent-decoded as RFC 3986 says (``+`` is a plus, not a space)."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError("an nbd+unix URL names no host: nbd+unix:///NAME?socket=/path")
    if parts.fragment or "#" in url:
        raise ValueError("an nbd+unix URL has no fragment")
    sockets = []
    for item in parts.query.split("&") if parts.query else []:
        key, sep, value = item.partition("=")
        if key != "socket" or not sep:
            raise ValueError(f"unsupported nbd+unix query parameter {item!r}; expected socket=")
        sockets.append(_decoded(value, "socket"))
    if len(sockets) != 1 or not sockets[0].startswith("/"):
        raise ValueError("an nbd+unix URL needs one socket=/absolute/path")
    export = _decoded(parts.path.removeprefix("/"), "export name")
    return sockets[0], export


def _decoded(text: str, what: str) -> str:
    try:
        value = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"the {what} of the nbd+unix URL is not UTF-8") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ValueError(f"the {what} of the nbd+unix URL has a control character")
    return value


def unix_url(path: str, export: str, *, like: str) -> str:
    """The URL of export on the socket at path, in the form of the URL like."""
    if like.startswith(URI_PREFIX):
        query = quote(path, safe="/")
        return f"{URI_PREFIX}/{quote(export, safe='')}?socket={query}"
    return f"{UNIX_PREFIX}{path}" + (f":exportname={export}" if export else "")


def open_nbd(url: str, *, mode: str, sparse: bool, dirty: bool) -> NbdBackend:
    """Connect to the export at url; mode is "r" or "rw".

    sparse lets zero() punch holes; dirty enables ``dirty`` extents from
    the one dirty bitmap the server exports.
    """
    if mode not in ("r", "rw"):
        raise ValueError(f"mode must be 'r' or 'rw', not {mode!r}")
    path, export = parse_url(url)
    h = nbd.NBD()
    try:
        bitmap = _connect(h, path, export, dirty=dirty)
        backend = NbdBackend(h, url=url, writable=mode == "rw", sparse=sparse, bitmap=bitmap)
    except nbd.Error as e:
        log.error("OPEN failed url=%s mode=%s error=%s", url, mode, e)
        raise BackendError(reason=f"connect failed: {_strerror(e)}") from e
    log.info(
        "OPEN url=%s mode=%s sparse=%s dirty=%s size=%d contexts=%s",
        url,
        mode,
        sparse,
        dirty,
        backend.size,
        ",".join(backend.contexts),
    )
    return backend


def _connect(h: Any, path: str, export: str, *, dirty: bool) -> str | None:
    """Negotiate the export and its contexts; the dirty bitmap's context if any."""
    h.set_export_name(export)
    # Option mode, to learn the bitmap's name before choosing the contexts.
    h.set_opt_mode(True)
    h.connect_unix(path)
    bitmap = None
    if h.aio_is_negotiating():
        bitmaps = _list_bitmaps(h) if dirty else []
        if len(bitmaps) > 1:
            log.warning("DIRTY ambiguous: the server exports bitmaps=%s", ",".join(bitmaps))
        elif bitmaps:
            bitmap = bitmaps[0]
        h.clear_meta_contexts()
        for name in (ALLOCATION, DEPTH, bitmap):
            if name is not None:
                h.add_meta_context(name)
        h.opt_go()
    return bitmap


def _list_bitmaps(h: Any) -> list[str]:
    found: list[str] = []

    def collect(name: str) -> int:
        found.append(name)
        return 0

    h.clear_meta_contexts()
    h.add_meta_context(BITMAP_PREFIX)
    try:
        h.opt_list_meta_context(collect)
    except nbd.Error as e:
        log.warning("DIRTY cannot list bitmaps error=%s", e)
    return [name for name in found if name.startswith(BITMAP_PREFIX)]


class NbdBackend:
    """An NBD export; owned by one connection."""

    def __init__(
        self, h: Any, *, url: str, writable: bool, sparse: bool, bitmap: str | None
    ) -> None:
        self._h: Any = h
        self._url = url
        self._sparse = sparse
        self._size = int(h.get_size())
        self._writable = writable and not h.is_read_only()
        if writable and not self._writable:
            log.warning("OPEN read-only export for a write ticket url=%s", url)
        self._block_size = max(1, int(h.get_block_size(nbd.SIZE_MINIMUM)))
        server_max = int(h.get_block_size(nbd.SIZE_MAXIMUM))
        self._max_io = min(server_max or DEFAULT_MAX_IO, LIBNBD_MAX_IO)
        self._can_zero = bool(h.can_zero()) if self._writable else False
        self._fast_zero = bool(h.can_fast_zero()) if self._can_zero else False
        self._can_flush = bool(h.can_flush())
        self.contexts = [
            c for c in (ALLOCATION, DEPTH, bitmap) if c is not None and h.can_meta_context(c)
        ]
        self._bitmap = bitmap if bitmap in self.contexts else None
        self._zeros: memoryview | None = None

    def __enter__(self) -> NbdBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self._size

    @property
    def block_size(self) -> int:
        return self._block_size

    def buffer(self, size: int) -> memoryview:
        return directio.aligned_buffer(size, self._block_size)

    def open_splice_reader(self) -> WireReader | None:
        """A connection of our own for reads spliced to the client (same
        consistency rule as open_reader)."""
        if self._writable and not self._h.can_multi_conn():
            return None
        path, export = parse_url(self._url)
        return WireReader(path, export)

    def max_writers(self) -> int | None:
        """One writer unless the server promises multi-conn consistency.

        Without it (NBD protocol, NBD_FLAG_CAN_MULTI_CONN) a flush on one
        connection need not cover writes made through another, so a client
        that writes on several connections and flushes on one could lose
        data that it saw acknowledged. qemu-nbd promises it when it allows
        several clients (``--shared`` other than 1), as ours does.
        """
        return None if self._h.can_multi_conn() else 1

    def open_reader(self) -> NbdBackend | None:
        """One more connection to the export, read-only: qemu-nbd serves the
        requests of each connection in turn, so two connections keep two
        reads going on its storage.

        None when this handle writes and the server does not promise that
        every connection sees every other's writes (NBD multi-conn).
        """
        if self._writable and not self._h.can_multi_conn():
            return None
        return open_nbd(self._url, mode="r", sparse=self._sparse, dirty=False)

    def readinto(self, offset: int, buf: memoryview) -> int:
        h = self._handle()
        length = min(len(buf), max(0, self._size - offset))
        with self._errors("read", offset, length):
            for pos in range(0, length, self._max_io):
                n = min(length - pos, self._max_io)
                # A copy: libnbd 1.14's aio_pread into nbd.Buffer.from_buffer
                # never releases the caller's buffer, and the connection's
                # mmap could then not be closed.
                buf[pos : pos + n] = h.pread(n, offset + pos)
        return length

    def write(self, offset: int, buf: memoryview) -> int:
        h = self._check_writable("write")
        with self._errors("write", offset, len(buf)):
            for pos in range(0, len(buf), self._max_io):
                h.pwrite(buf[pos : pos + self._max_io], offset + pos)
        return len(buf)

    def zero(self, offset: int, length: int, *, punch_hole: bool) -> None:
        h = self._check_writable("zero")
        # NO_HOLE keeps a preallocated volume allocated (qemu: fallocate
        # ZERO_RANGE instead of PUNCH_HOLE).
        flags = 0 if punch_hole and self._sparse else nbd.CMD_FLAG_NO_HOLE
        with self._errors("zero", offset, length):
            for pos in range(offset, offset + length, MAX_ZERO):
                n = min(offset + length - pos, MAX_ZERO)
                if self._can_zero:
                    self._zero(h, pos, n, flags)
                else:
                    self._write_zeros(h, pos, n)

    def flush(self) -> None:
        h = self._handle()
        if self._can_flush:
            with self._errors("flush", 0, 0):
                h.flush()

    def extents(self, context: str, start: int, length: int) -> Iterator[ZeroExtent | DirtyExtent]:
        self._handle()
        if context == "zero":
            wanted = [c for c in (ALLOCATION, DEPTH) if c in self.contexts]
        elif context == "dirty":
            if self._bitmap is None:
                raise UnsupportedContext(
                    context=context, reason="the NBD server exports no dirty bitmap"
                )
            wanted = [c for c in (self._bitmap, ALLOCATION) if c in self.contexts]
        else:
            raise UnsupportedContext(context=context, reason="unknown context")
        if start < 0 or length < 0:
            raise ValueError(f"negative start={start} or length={length}")
        end = min(start + length, self._size)
        if start >= end:
            return iter(())
        with self._errors("extents", start, length):
            found = list(self._block_status(wanted, start, end))
        if context == "dirty":
            return iter(merge([dirty_extent(run, wanted) for run in found]))
        return iter(merge([zero_extent(run, wanted) for run in found]))

    def close(self) -> None:
        h, self._h = self._h, None
        if h is None:
            return
        self._zeros = None
        try:
            h.shutdown()
        except nbd.Error as e:
            log.warning("CLOSE unclean url=%s error=%s", self._url, e)

    # Block status.

    def _block_status(self, wanted: list[str], start: int, end: int) -> Iterator[Run]:
        """Runs of [start, end) with the flags of each wanted context."""
        if not wanted:
            yield Run(start, end - start, ())
            return
        pos = start
        while pos < end:
            replies = self._status_reply(wanted, pos, min(end - pos, MAX_STATUS))
            found = intersect(pos, [runs(replies[name]) for name in wanted], end)
            if not found:
                raise BackendError(reason="NBD server sent an empty block status")
            yield from found
            pos = found[-1].start + found[-1].length

    def _status_reply(self, wanted: list[str], offset: int, count: int) -> dict[str, list[int]]:
        replies: dict[str, list[int]] = {name: [] for name in wanted}

        def collect(name: str, _offset: int, entries: list[int], _err: Any) -> int:
            # Runs in libnbd's reply loop: must not raise or call the handle.
            if name in replies:
                replies[name].extend(entries)
            return 0

        self._handle().block_status(count, offset, collect)
        return replies

    # Zeroing.

    def _zero(self, h: Any, offset: int, length: int, flags: int) -> None:
        if self._fast_zero:
            # A fast zero fails at once where the server would write zeros
            # itself (qemu: no fallback); then the plain zero does that.
            try:
                h.zero(length, offset, flags | nbd.CMD_FLAG_FAST_ZERO)
                return
            except nbd.Error as e:
                if e.errnum not in _UNSUPPORTED:
                    raise
                log.info("ZERO fast zero unsupported url=%s error=%s", self._url, e)
                self._fast_zero = False
        h.zero(length, offset, flags)

    def _write_zeros(self, h: Any, offset: int, length: int) -> None:
        if self._zeros is None:
            self._zeros = self.buffer(min(self._max_io, 1024**2))
        for pos in range(offset, offset + length, len(self._zeros)):
            h.pwrite(self._zeros[: min(offset + length - pos, len(self._zeros))], pos)

    # Plumbing.

    def _handle(self) -> Any:
        if self._h is None:
            raise ValueError("I/O on a closed backend")
        return self._h

    def _check_writable(self, op: str) -> Any:
        h = self._handle()
        if not self._writable:
            raise StorageReadOnly(op=op)
        return h

    @contextlib.contextmanager
    def _errors(self, op: str, offset: int, length: int) -> Iterator[None]:
        # Clients get the errno text only; the server's message stays in the log.
        try:
            yield
        except nbd.Error as e:
            log.error(
                "%s failed url=%s offset=%d length=%d error=%s",
                op.upper(),
                self._url,
                offset,
                length,
                e,
            )
            if e.errnum in NO_SPACE_ERRNOS:
                raise StorageFull(reason=f"{op} failed: {_strerror(e)}") from e
            raise BackendError(reason=f"{op} failed: {_strerror(e)}") from e


def _strerror(e: nbd.Error) -> str:
    return os.strerror(e.errnum) if e.errnum else "NBD protocol error"
