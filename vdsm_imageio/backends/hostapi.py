"""What a host daemon's /images API answers, as values (the http backend's core).

Pure functions over status codes, headers and bodies, so the proxy's
reading of a host is tested without sockets: the OPTIONS reply (features,
limits, size, unix socket), extents pages, the Content-Range of a partial
reply, and the domain error that a failed reply becomes.

Rules:
- A host is another daemon, ours or ovirt-imageio 2.x: what it leaves out
  of OPTIONS gets the safe value (no feature, one reader and one writer,
  size unknown), as an old daemon answers 204 or 405 to OPTIONS.
- What the host says is checked like any input: a malformed reply is the
  host's failure (HostError, 502), never a default.
- The host's error text reaches the client as one line of at most
  ``MAX_MESSAGE`` characters without control characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..errors import HostError, HostForbidden, HostRefused, UnsupportedContext
from . import DirtyExtent, HostOptions, ZeroExtent

MAX_MESSAGE = 512
# Statuses whose meaning holds for the client of a proxy as it did for the
# proxy (RFC 9110 section 15.5: the request was refused; 503 retry later;
# 507 the host's storage is full). Any other failure is the host's own,
# which the proxy reports as a bad gateway.
PASSED_THROUGH = frozenset({503, 507})
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


NO_OPTIONS = HostOptions(frozenset(), 1, 1, None, None)


def parse_options(host: str, status: int, body: bytes) -> HostOptions:
    """The reply to ``OPTIONS /images/<ticket>``."""
    if status in (204, 405):
        # Daemons older than the features list.
        return NO_OPTIONS
    if status != 200:
        raise error_for(host, status, body)
    obj = _json(host, body, "OPTIONS")
    if not isinstance(obj, dict):
        raise _bad(host, "OPTIONS", "not a JSON object")
    features = obj.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise _bad(host, "OPTIONS", "features is not a list of names")
    unix = obj.get("unix_socket")
    if unix is not None and not isinstance(unix, str):
        raise _bad(host, "OPTIONS", "unix_socket is not a string")
    size = obj.get("size")
    return HostOptions(
        features=frozenset(features),
        max_readers=_count(host, obj, "max_readers"),
        max_writers=_count(host, obj, "max_writers"),
        size=None if size is None else _natural(host, "OPTIONS", "size", size),
        unix_socket=unix or None,
    )


def _count(host: str, obj: dict[str, object], name: str) -> int:
    # Not advertised: assume one, as a server that predates the limits
    # may not take more (a second writer could lose data).
    value = obj.get(name, 1)
    return _natural(host, "OPTIONS", name, value)


def _natural(host: str, what: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(host, what, f"{name} is not an integer >= 0")
    return value


def range_header(start: int, length: int) -> str:
    """The Range of a GET for [start, start + length), length > 0."""
    return f"bytes={start}-{start + length - 1}"


def content_range(host: str, header: str | None) -> tuple[int, int, int | None]:
    """Start, end (exclusive) and size of a 206 reply's Content-Range."""
    m = _CONTENT_RANGE.fullmatch(header or "")
    if m is None:
        raise _bad(host, "GET", f"Content-Range {_short(header or '')!r} is not bytes a-b/size")
    first, last = int(m.group(1)), int(m.group(2))
    if last < first:
        raise _bad(host, "GET", "Content-Range ends before it starts")
    size = None if m.group(3) == "*" else int(m.group(3))
    return first, last + 1, size


def parse_extents(host: str, context: str, body: bytes) -> list[ZeroExtent] | list[DirtyExtent]:
    """One page of ``GET /images/<ticket>/extents?context=...``."""
    obj = _json(host, body, "EXTENTS")
    if not isinstance(obj, list) or not all(isinstance(e, dict) for e in obj):
        raise _bad(host, "EXTENTS", "not a list of objects")
    try:
        if context == "dirty":
            return [
                DirtyExtent(
                    _int(e["start"]), _int(e["length"]), _bool(e["dirty"]), _bool(e["zero"])
                )
                for e in obj
            ]
        return [
            ZeroExtent(_int(e["start"]), _int(e["length"]), _bool(e["zero"]), _bool(e["hole"]))
            for e in obj
        ]
    except (KeyError, TypeError) as e:
        raise _bad(host, "EXTENTS", f"an extent lacks or mistypes {e}") from None


def clip(
    extents: Iterable[ZeroExtent | DirtyExtent], start: int, end: int
) -> Iterator[ZeroExtent | DirtyExtent]:
    """The parts of extents within [start, end): a host may answer for
    more than asked (ovirt-imageio ignores start and length)."""
    for e in extents:
        a, b = max(e.start, start), min(e.start + e.length, end)
        if a < b:
            yield _with_range(e, a, b - a)


Page = Callable[[int, int], Sequence[ZeroExtent | DirtyExtent]]


def paged(host: str, page: Page, start: int, end: int) -> list[ZeroExtent | DirtyExtent]:
    """The extents of [start, end) from the host's pages: page(pos, end)
    answers from pos on, maybe less than asked (a host may page) or more
    (clipped). Each page must go on from where the last one ended without a
    gap and cover a byte at least, so the loop ends within end - start pages."""
    found: list[ZeroExtent | DirtyExtent] = []
    pos = start
    while pos < end:
        extents = list(clip(page(pos, end), pos, end))
        if not extents:
            raise _bad(host, "EXTENTS", f"none from offset {pos}")
        for e in extents:
            if e.start != pos:
                raise _bad(host, "EXTENTS", f"a gap or an overlap at offset {pos}")
            pos += e.length
        found.extend(extents)
    return merge(found)


def merge(extents: Iterable[ZeroExtent | DirtyExtent]) -> list[ZeroExtent | DirtyExtent]:
    """Adjacent extents of one kind joined, as where pages meet."""
    out: list[ZeroExtent | DirtyExtent] = []
    for e in extents:
        last = out[-1] if out else None
        if last is not None and last.start + last.length == e.start and _kind(last) == _kind(e):
            out[-1] = _with_range(last, last.start, last.length + e.length)
        else:
            out.append(e)
    return out


def _kind(e: ZeroExtent | DirtyExtent) -> tuple[type, bool, bool]:
    if isinstance(e, ZeroExtent):
        return ZeroExtent, e.zero, e.hole
    return DirtyExtent, e.dirty, e.zero


def _with_range(e: ZeroExtent | DirtyExtent, start: int, length: int) -> ZeroExtent | DirtyExtent:
    if isinstance(e, ZeroExtent):
        return ZeroExtent(start, length, zero=e.zero, hole=e.hole)
    return DirtyExtent(start, length, dirty=e.dirty, zero=e.zero)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError("an integer >= 0")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def parse_checksum(host: str, body: bytes, *, algorithm: str, block_size: int) -> str:
    """The digest in the reply to ``GET /images/<ticket>/checksum`` asked
    with algorithm and block_size; a reply for others is not an answer."""
    obj = _json(host, body, "CHECKSUM")
    if not isinstance(obj, dict):
        raise _bad(host, "CHECKSUM", "not a JSON object")
    got_algorithm, got_block_size, checksum = (
        obj.get(k) for k in ("algorithm", "block_size", "checksum")
    )
    if not isinstance(got_algorithm, str) or not isinstance(checksum, str):
        raise _bad(host, "CHECKSUM", "algorithm or checksum is not a string")
    got_block_size = _natural(host, "CHECKSUM", "block_size", got_block_size)
    if (got_algorithm, got_block_size) != (algorithm, block_size):
        raise _bad(
            host,
            "CHECKSUM",
            f"asked for {algorithm} in blocks of {block_size}, "
            f"got {_short(got_algorithm)} in blocks of {got_block_size}",
        )
    return checksum


def error_for(host: str, status: int, body: bytes, *, size: int | None = None) -> HostError:
    """The domain error of a failed reply (see http.errors for its status)."""
    message = message_of(body) or f"status {status}"
    if status == 403:
        return HostForbidden(host=host, status=status, reason=message)
    if 400 <= status < 500 or status in PASSED_THROUGH:
        return HostRefused(host=host, status=status, reason=message, size=size)
    return HostError(host=host, reason=f"answered {status}: {message}")


def extents_error(host: str, context: str, status: int, body: bytes) -> Exception:
    """A failed extents reply: 404 means the host has no such extents (a
    ticket without dirty, storage without a bitmap), as it means here."""
    if status == 404:
        return UnsupportedContext(context=context, reason=f"host daemon: {message_of(body)}")
    return error_for(host, status, body)


def message_of(body: bytes) -> str:
    """The first line of an error body, short and without control characters."""
    text = body[: MAX_MESSAGE * 4].decode("utf-8", errors="replace").strip()
    line = _CONTROL.sub(" ", text.split("\n", 1)[0]).strip()
    return _short(line, MAX_MESSAGE)


def _json(host: str, body: bytes, what: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _bad(host, what, "the body is not JSON") from None


def _bad(host: str, what: str, reason: str) -> HostError:
    return HostError(host=host, reason=f"bad {what} reply: {reason}")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
