"""Pure helpers for NBD block status replies: runs, intersection, merging.

A block status reply lists, per metadata context, descriptors of
(length, flags) from the requested offset onwards (NBD protocol,
"NBD_REPLY_TYPE_BLOCK_STATUS"). Contexts need not agree on boundaries or
on how far they reach, and the last descriptor may reach past the range
asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from vdsm_imageio.backends import DirtyExtent, ZeroExtent

ALLOCATION = "base:allocation"
DEPTH = "qemu:allocation-depth"
BITMAP_PREFIX = "qemu:dirty-bitmap:"

# NBD protocol, "base:allocation" context.
STATE_HOLE = 1
STATE_ZERO = 2
# qemu's docs/interop/nbd.txt: bit 0 of a "qemu:dirty-bitmap:" context.
STATE_DIRTY = 1


@dataclass(frozen=True)
class Run:
    """A range with the flags every context reported for all of it."""

    start: int
    length: int
    flags: tuple[int, ...]


def runs(entries: Sequence[int]) -> list[tuple[int, int]]:
    """(length, flags) pairs of a flat libnbd entries list; empty runs dropped."""
    if len(entries) % 2:
        raise ValueError(f"odd number of block status entries: {len(entries)}")
    pairs = zip(entries[::2], entries[1::2], strict=True)
    return [(length, flags) for length, flags in pairs if length > 0]


def intersect(start: int, contexts: Sequence[Sequence[tuple[int, int]]], end: int) -> list[Run]:
    """Cut the contexts' runs, all starting at start, where any changes.

    Stops at end or where the shortest context's reply stops.
    """
    index = [0] * len(contexts)
    left = [ctx[0][0] if ctx else 0 for ctx in contexts]
    found: list[Run] = []
    pos = start
    while pos < end and all(i < len(ctx) for i, ctx in zip(index, contexts, strict=True)):
        step = min([end - pos, *left])
        flags = tuple(ctx[i][1] for i, ctx in zip(index, contexts, strict=True))
        found.append(Run(pos, step, flags))
        pos += step
        for n, ctx in enumerate(contexts):
            left[n] -= step
            if left[n] == 0:
                index[n] += 1
                if index[n] < len(ctx):
                    left[n] = ctx[index[n]][0]
    return found


def zero_extent(run: Run, wanted: list[str]) -> ZeroExtent:
    """A run's ZeroExtent; wanted names the contexts of run.flags in order."""
    flags = dict(zip(wanted, run.flags, strict=True))
    alloc = flags.get(ALLOCATION, 0)
    zero = bool(alloc & STATE_ZERO)
    if DEPTH in flags:
        # Not allocated in this image: a hole, also over a backing file's data.
        hole = flags[DEPTH] != 1
    else:
        hole = bool(alloc & STATE_HOLE)
    return ZeroExtent(run.start, run.length, zero=zero, hole=hole)


def dirty_extent(run: Run, wanted: list[str]) -> DirtyExtent:
    """A run's DirtyExtent; the bitmap's context comes first in wanted."""
    flags = dict(zip(wanted, run.flags, strict=True))
    dirty = bool(flags[wanted[0]] & STATE_DIRTY)
    zero = bool(flags.get(ALLOCATION, 0) & STATE_ZERO)
    return DirtyExtent(run.start, run.length, dirty=dirty, zero=zero)


E = TypeVar("E", ZeroExtent, DirtyExtent)


def merge(extents: Iterable[E]) -> list[E]:
    """Join adjacent extents that differ only in start and length."""
    merged: list[E] = []
    for ext in extents:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.start + last.length == ext.start
            and dataclasses.replace(last, start=ext.start, length=ext.length) == ext
        ):
            merged[-1] = dataclasses.replace(last, length=last.length + ext.length)
        else:
            merged.append(ext)
    return merged
