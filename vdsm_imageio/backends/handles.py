"""The handles a connection holds on its ticket's storage.

The backend is opened on first use and kept for the connection's next
requests on the same ticket; read handles for parallel reads are opened
beside it when a request first wants them (only backends that gain from
them, ``ParallelReads``, have any) and live as long as it. All are closed
together, when the connection leaves the ticket or closes. Connections for
spliced reads (``SpliceReaders``) serve one request: its caller closes them.

Failing to open an extra handle is not an error: the request runs with
those it has.

``abort`` (a canceled ticket, from another thread) stops the I/O of the
handles that can stop it (``Abortable``), also of those opened after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from ..errors import BackendError
from . import Abortable, Backend, ParallelReads, SpliceReader, SpliceReaders

log = logging.getLogger(__name__)


class _Closable(Protocol):
    def close(self) -> None: ...


H = TypeVar("H", bound=_Closable)


class Handles:
    def __init__(self, open_backend: Callable[[], Backend], *, transfer_id: str) -> None:
        self._open = open_backend
        self.transfer_id = transfer_id
        self._backend: Backend | None = None
        self._readers: list[Backend] = []
        self._aborted = False

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._opened(self._open())
        return self._backend

    def readers(self, count: int) -> list[Backend]:
        """Up to count handles for reading in parallel, the backend first."""
        main = self.backend
        if isinstance(main, ParallelReads):
            want = count - 1 - len(self._readers)
            more = self._open_some(main.open_reader, want, 1 + len(self._readers))
            self._readers += [self._opened(r) for r in more]
        return [main, *self._readers[: count - 1]]

    def splice_readers(self, backend: SpliceReaders, count: int) -> list[SpliceReader]:
        """Up to count connections for spliced reads, for one request: the
        caller closes them."""
        return self._open_some(backend.open_splice_reader, count, 0, what="SPLICE readers")

    def _open_some(
        self, open_one: Callable[[], H | None], count: int, have: int, *, what: str = "READERS"
    ) -> list[H]:
        opened: list[H] = []
        try:
            while len(opened) < count:
                try:
                    handle = open_one()
                except BackendError as e:
                    log.warning(
                        "%s fewer than asked transfer=%s have=%d reason=%s",
                        what,
                        self.transfer_id,
                        have + len(opened),
                        e,
                    )
                    break
                if handle is None:
                    break
                opened.append(handle)
        except BaseException:
            for handle in opened:
                handle.close()
            raise
        return opened

    def abort(self) -> None:
        """Make the I/O under way fail now, and every later I/O; any thread."""
        self._aborted = True
        for handle in [self._backend, *self._readers]:
            if isinstance(handle, Abortable):
                handle.abort()

    def _opened(self, handle: Backend) -> Backend:
        # abort() may have run while it was opening.
        if self._aborted and isinstance(handle, Abortable):
            handle.abort()
        return handle

    def close(self) -> None:
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()
        if self._backend is not None:
            backend, self._backend = self._backend, None
            backend.close()
