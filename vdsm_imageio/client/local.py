"""The image on this host: the source of an upload, the target of a download.

A raw file is its own guest data: it is read and written directly, with
the service's file backend (O_DIRECT, extents from SEEK_DATA/SEEK_HOLE),
and nothing stands between it and the socket. Any other format (qcow2) is
served by a private qemu-nbd on a socket in a temporary directory and
reached with libnbd through the service's nbd backend, so the transfer
moves guest data: a qcow2 with a backing chain uploads as one disk.
qemu-nbd is read-only for an upload's source.

qemu-nbd runs in a session of its own: the terminal's Ctrl-C reaches only
the client, which stops the transfer, writes the journal, and then stops
qemu-nbd itself. If the client dies, the kernel stops qemu-nbd
(``storage.spawn``).

Each worker opens its own handle (``open``); errors of the backends are
translated into ``LocalImageError`` here, once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from storage import spawn
from storage.qemu_nbd import QemuNbd

from .. import zerocopy
from ..backends import Backend, ZeroExtent
from ..backends.file import open_file
from ..backends.nbd import open_nbd
from ..backends.nbdwire import WireReader
from ..backends.sectorlock import SectorLocks
from ..errors import ImageioError
from ..zerocopy import Fill
from .errors import LocalImageError, UsageError
from .nbdread import PipelinedReader

log = logging.getLogger(__name__)

FORMATS = ("raw", "qcow2")
QEMU_IMG_TIMEOUT = 60.0


@dataclass(frozen=True)
class ImageInfo:
    path: str
    format: str
    size: int
    backing: str | None


def inspect(path: str) -> ImageInfo:
    """Format, virtual size and backing file of an image, from qemu-img."""
    if not os.path.exists(path):
        raise UsageError(reason=f"{path} does not exist")
    doc = _qemu_img_json(["info", "--output=json", "--force-share", path], path)
    fmt = str(doc.get("format", ""))
    return ImageInfo(
        path=path,
        format=fmt,
        size=int(doc.get("virtual-size", 0)),
        backing=doc.get("full-backing-filename") or doc.get("backing-filename"),
    )


def create(path: str, fmt: str, size: int, *, backing: str | None = None) -> None:
    """A new empty image (truncating a raw file, replacing any other)."""
    if fmt == "raw":
        if backing:
            raise UsageError(reason="a raw file cannot have a backing file; use --format qcow2")
        try:
            with open(path, "wb") as f:
                f.truncate(size)
        except OSError as e:
            raise LocalImageError(path=path, reason=e.strerror or str(e)) from None
        return
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing:
        argv += ["-b", os.path.abspath(backing), "-F", inspect(backing).format]
    _run([*argv, path, str(size)], path)


class LocalImage:
    """One image opened for a transfer; a handle per worker."""

    def __init__(self, path: str, fmt: str, *, writable: bool) -> None:
        if fmt not in FORMATS:
            raise UsageError(
                reason=f"{path}: format {fmt!r} is not supported; "
                f"convert it with qemu-img convert -O qcow2"
            )
        self.path = path
        self.format = fmt
        self.writable = writable
        self._server: QemuNbd | None = None
        self._tmp: str | None = None
        # Workers writing next to each other may share a sector.
        self._locks = SectorLocks()
        if fmt != "raw":
            self._serve()
        with self.open() as h:
            self.size = h.size

    def __enter__(self) -> LocalImage:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> Handle:
        mode = "rw" if self.writable else "r"
        with _translated(self.path):
            if self._server is None:
                return Handle(
                    open_file(self.path, mode=mode, sparse=True, locks=self._locks), self.path
                )
            backend = open_nbd(self._server.url, mode=mode, sparse=True, dirty=False)
            # A source's reads go several at a time (client.nbdread).
            socket = None if self.writable else self._server.socket_path
            return Handle(backend, self.path, nbd_socket=socket)

    def close(self) -> None:
        server, self._server = self._server, None
        try:
            if server is not None:
                server.stop()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def _serve(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="vdsm-imageio-")
        server = QemuNbd(
            os.path.abspath(self.path),
            self.format,
            os.path.join(self._tmp, "nbd.sock"),
            read_only=not self.writable,
            spawner=_OwnSession(),
            # A server of this transfer alone, gone when it ends.
            reuse_buffers=True,
        )
        try:
            with _translated(self.path):
                server.start()
        except BaseException:
            self.close()
            raise
        self._server = server


class Handle:
    """A backend of the local image, with its errors translated.

    An NBD image's handle reads into the buffer it hands out with several
    commands in flight (``nbdread``); other buffers take the backend's path.
    """

    def __init__(self, backend: Backend, path: str, *, nbd_socket: str | None = None) -> None:
        self._b = backend
        self._path = path
        self._nbd_socket = nbd_socket
        self._reader: PipelinedReader | None = None
        self._wires: list[WireReader] = []
        self.size = backend.size

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def splice_fills(self) -> list[Fill] | None:
        """Functions that put source data into a pipe (``zerocopy.Fill``),
        one per lane, each on an NBD connection of its own whose replies
        are spliced, never copied (``backends.nbdwire``); None for a raw
        file, whose reads take the backend's path. They raise the
        backends' errors: the caller owns the request they fail."""
        if self._nbd_socket is None:
            return None
        with _translated(self._path):
            while len(self._wires) < zerocopy.LANES:
                self._wires.append(WireReader(self._nbd_socket, ""))
        return [wire.fill for wire in self._wires]

    def buffer(self, size: int) -> memoryview:
        if self._nbd_socket is None:
            return self._b.buffer(size)
        if self._reader is None:
            with _translated(self._path):
                self._reader = PipelinedReader(self._nbd_socket, size)
        return self._reader.buffer[:size]

    def readinto(self, offset: int, buf: memoryview) -> int:
        with _translated(self._path):
            if self._reader is not None and self._reader.owns(buf):
                length = min(len(buf), max(0, self.size - offset))
                return self._reader.readinto(offset, buf[:length]) if length else 0
            return self._b.readinto(offset, buf)

    def write(self, offset: int, buf: memoryview) -> None:
        with _translated(self._path):
            self._b.write(offset, buf)

    def zero(self, offset: int, length: int) -> None:
        with _translated(self._path):
            # No hole punching: with a backing file, a hole would show the
            # backing file's data instead of zeros.
            self._b.zero(offset, length, punch_hole=False)

    def flush(self) -> None:
        with _translated(self._path):
            self._b.flush()

    def zero_extents(self) -> list[ZeroExtent]:
        with _translated(self._path):
            found = list(self._b.extents("zero", 0, self.size))
        return [e for e in found if isinstance(e, ZeroExtent)]

    def close(self) -> None:
        try:
            for wire in self._wires:
                wire.close()
            if self._reader is not None:
                self._reader.close()
        finally:
            self._b.close()


class _OwnSession(spawn.Spawner):
    """Forks from the calling thread (the command's main thread, which
    outlives the child) into a session of its own, out of reach of the
    terminal's Ctrl-C."""

    def popen(self, argv: list[str], **kwargs: Any) -> spawn.Popen:
        return spawn.popen(argv, start_new_session=True, **kwargs)


@contextlib.contextmanager
def _translated(path: str) -> Iterator[None]:
    try:
        yield
    except ImageioError as e:
        raise LocalImageError(path=path, reason=e.message) from None
    except OSError as e:
        raise LocalImageError(path=path, reason=e.strerror or str(e)) from None


def _qemu_img_json(args: list[str], path: str) -> dict[str, Any]:
    out = _run(["qemu-img", *args], path)
    try:
        doc = json.loads(out)
    except ValueError:
        raise LocalImageError(path=path, reason="qemu-img printed no JSON") from None
    if not isinstance(doc, dict):
        raise LocalImageError(path=path, reason="qemu-img printed no JSON object")
    return doc


def _run(argv: list[str], path: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LocalImageError(path=path, reason=f"{argv[0]} failed: {e}") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        raise LocalImageError(path=path, reason=reason)
    return done.stdout
