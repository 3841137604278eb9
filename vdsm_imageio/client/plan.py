"""What a transfer does with each range of the image, without I/O.

Rules, one table per direction:

- upload, zero extents of the source: data is copied; a zero range is
  zeroed on the disk (PATCH zero), or skipped when the disk is known to
  read as zeros (``--target-is-zero``). The disk beyond the end of the
  source is zeroed too, so the disk reads as the image and then zeros.
- download, zero extents of the server: data is copied; holes are
  skipped (a new target reads as zeros, or as its backing file, which is
  what a hole means); allocated zeros are skipped on a target without a
  backing file and zeroed on one with, to hide the backing file's data.
- download, dirty extents (incremental): dirty data is copied, dirty
  zeros are zeroed, clean ranges are skipped (they show the backing file).

Then the ranges already done (a resumed transfer's journal) are taken
out, and long ranges are cut into items a worker does in one request, so
the work spreads over the workers and each request ends soon enough for
the journal to follow it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..backends import DirtyExtent, ZeroExtent
from .ranges import Ranges

MiB = 1024**2
GiB = 1024**3

# One PUT or GET: long enough that a request's overhead is small, short
# enough that the workers share a run and an interrupted transfer sends
# little again (a request cut off is sent again whole). Small images get
# smaller requests (``copy_size``).
MAX_COPY = 16 * MiB
MIN_COPY = 1 * MiB
# Requests per worker at least, for an image that is all data.
ITEMS_PER_WORKER = 8
# Zeroing costs the server little per byte; it splits huge ranges itself.
MAX_ZERO = 1 * GiB


class Op(enum.Enum):
    COPY = "copy"
    ZERO = "zero"
    SKIP = "skip"


@dataclass(frozen=True)
class Item:
    op: Op
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length


def check_extents(extents: Sequence[ZeroExtent | DirtyExtent], size: int) -> None:
    """Extents must cover [0, size) in order, without gaps or overlaps."""
    pos = 0
    for e in extents:
        if e.start != pos or e.length <= 0:
            raise ValueError(f"extent at {e.start} of {e.length} bytes does not follow {pos}")
        pos = e.start + e.length
    if pos != size:
        raise ValueError(f"extents end at {pos}, the image at {size}")


def upload(extents: Iterable[ZeroExtent], *, target_is_zero: bool) -> Iterator[Item]:
    zero_op = Op.SKIP if target_is_zero else Op.ZERO
    for e in extents:
        yield Item(zero_op if e.zero else Op.COPY, e.start, e.length)


def disk_tail(source_size: int, disk_size: int, *, target_is_zero: bool) -> Iterator[Item]:
    """The disk past the end of the source."""
    if disk_size > source_size:
        op = Op.SKIP if target_is_zero else Op.ZERO
        yield Item(op, source_size, disk_size - source_size)


def download(extents: Iterable[ZeroExtent], *, backing: bool) -> Iterator[Item]:
    for e in extents:
        if not e.zero:
            op = Op.COPY
        elif e.hole or not backing:
            op = Op.SKIP
        else:
            op = Op.ZERO
        yield Item(op, e.start, e.length)


def incremental(extents: Iterable[DirtyExtent]) -> Iterator[Item]:
    for e in extents:
        if not e.dirty:
            op = Op.SKIP
        elif e.zero:
            op = Op.ZERO
        else:
            op = Op.COPY
        yield Item(op, e.start, e.length)


def copy_size(size: int, workers: int) -> int:
    """Request size for an image: at most MAX_COPY, whole MiBs, and small
    enough that every worker gets several requests."""
    share = size // (max(1, workers) * ITEMS_PER_WORKER) // MIN_COPY * MIN_COPY
    return max(MIN_COPY, min(MAX_COPY, share))


def remaining(
    items: Iterable[Item],
    done: Ranges,
    *,
    max_copy: int = MAX_COPY,
    max_zero: int = MAX_ZERO,
) -> Iterator[Item]:
    """Items without what is done, cut to size; skips stay whole."""
    for item in items:
        for start, end in done.missing(item.start, item.end):
            if item.op is Op.SKIP:
                yield Item(Op.SKIP, start, end - start)
                continue
            step = max_copy if item.op is Op.COPY else max_zero
            for pos in range(start, end, step):
                yield Item(item.op, pos, min(step, end - pos))
