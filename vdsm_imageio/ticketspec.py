"""Parsing and validation of the ticket object sent by vdsm and the engine.

Rules:
- Every field is checked; an error names the field and the reason, never
  falls back to a default for a value that was sent.
- Unknown keys are accepted and ignored: the engine sends extras.
- ``write`` implies ``read``: a writer must be able to verify what it wrote.
- Exactly one of ``url`` and ``volume``.
- ``bool`` is not an ``int`` here, although Python says it is.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidTicket

OPS = ("read", "write")
URL_SCHEMES = ("file", "nbd", "https")
VOLUME_DOMAINS = ("file", "block")
VOLUME_FORMATS = ("raw", "cow")
# sd_id, img_id and vol_id become path components and LVM names.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


@dataclass(frozen=True)
class Lease:
    path: str
    offset: int


@dataclass(frozen=True)
class Volume:
    domain: str
    sd_id: str
    img_id: str
    vol_id: str
    format: str = "raw"
    lease: Lease | None = None
    nbd: bool = False
    bitmap: str | None = None


@dataclass(frozen=True)
class TicketSpec:
    uuid: str
    size: int
    ops: tuple[str, ...]
    timeout: int
    inactivity_timeout: int
    transfer_id: str
    url: str | None = None
    volume: Volume | None = None
    filename: str | None = None
    sparse: bool = False
    dirty: bool = False
    # The request as sent (known keys only), echoed back in status.
    raw_volume: dict[str, Any] | None = field(default=None, compare=False)

    def allows(self, op: str) -> bool:
        return op in self.ops

    def first_difference(self, other: TicketSpec) -> str | None:
        for f in fields(self):
            if f.compare and getattr(self, f.name) != getattr(other, f.name):
                return f.name
        return None


def parse(
    obj: object,
    *,
    default_inactivity_timeout: int,
) -> TicketSpec:
    if not isinstance(obj, dict):
        raise InvalidTicket(field="ticket", reason="must be a JSON object")
    uuid = _string(obj, "uuid", required=True)
    assert uuid is not None
    size = _integer(obj, "size", required=True)
    timeout = _integer(obj, "timeout", required=True)
    inactivity = _integer(obj, "inactivity_timeout", required=False)
    transfer_id = _string(obj, "transfer_id", required=False)
    url = _url(obj)
    volume = _volume(obj)
    if (url is None) == (volume is None):
        raise InvalidTicket(field="url", reason="exactly one of url and volume is required")
    assert size is not None and timeout is not None
    return TicketSpec(
        uuid=uuid,
        size=size,
        ops=_ops(obj),
        timeout=timeout,
        inactivity_timeout=(default_inactivity_timeout if inactivity is None else inactivity),
        transfer_id=transfer_id or anonymous_transfer_id(uuid),
        url=url,
        volume=volume,
        filename=_string(obj, "filename", required=False),
        sparse=_boolean(obj, "sparse"),
        dirty=_boolean(obj, "dirty"),
        raw_volume=dict(obj["volume"]) if volume is not None else None,
    )


def anonymous_transfer_id(uuid: str) -> str:
    """A log name for a ticket sent without transfer_id; the uuid is a secret."""
    return "anon-" + hashlib.sha256(uuid.encode()).hexdigest()[:12]


def _string(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidTicket(field=name, reason="is required")
        return None
    if not isinstance(value, str) or not value:
        raise InvalidTicket(field=name, reason="must be a non-empty string")
    return value


def _integer(obj: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidTicket(field=name, reason="is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTicket(field=name, reason=f"must be an integer, got {value!r}")
    if value < 0:
        raise InvalidTicket(field=name, reason=f"must be >= 0, got {value}")
    return value


def _boolean(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise InvalidTicket(field=name, reason=f"must be true or false, got {value!r}")
    return value


def _ops(obj: dict[str, Any]) -> tuple[str, ...]:
    value = obj.get("ops")
    if value is None:
        raise InvalidTicket(field="ops", reason="is required")
    if not isinstance(value, list) or not value:
        raise InvalidTicket(field="ops", reason="must be a non-empty list")
    for op in value:
        if op not in OPS:
            raise InvalidTicket(field="ops", reason=f"unknown operation {op!r}")
    ops = set(value)
    if "write" in ops:
        ops.add("read")
    return tuple(op for op in OPS if op in ops)


def _url(obj: dict[str, Any]) -> str | None:
    value = _string(obj, "url", required=False)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in URL_SCHEMES:
        raise InvalidTicket(
            field="url",
            reason=f"unsupported scheme {parts.scheme!r}, expected one of "
            + ", ".join(URL_SCHEMES),
        )
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise InvalidTicket(field="url", reason="file URL needs an absolute path")
    if parts.scheme == "nbd" and not value.startswith("nbd:unix:/"):
        raise InvalidTicket(field="url", reason="expected nbd:unix:/path[:exportname=NAME]")
    if parts.scheme == "https" and not parts.hostname:
        raise InvalidTicket(field="url", reason="https URL needs a host")
    return value


def _volume(obj: dict[str, Any]) -> Volume | None:
    value = obj.get("volume")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTicket(field="volume", reason="must be an object")
    domain = _prefixed(_string, value, "domain", required=True)
    if domain not in VOLUME_DOMAINS:
        raise InvalidTicket(
            field="volume.domain", reason=f"must be one of {', '.join(VOLUME_DOMAINS)}"
        )
    ids = {}
    for name in ("sd_id", "img_id", "vol_id"):
        ident = _prefixed(_string, value, name, required=True)
        if not _ID_RE.match(ident):
            raise InvalidTicket(field=f"volume.{name}", reason=f"invalid identifier {ident!r}")
        ids[name] = ident
    fmt = value.get("format", "raw")
    if fmt not in VOLUME_FORMATS:
        raise InvalidTicket(
            field="volume.format", reason=f"must be one of {', '.join(VOLUME_FORMATS)}"
        )
    nbd = _prefixed(_boolean, value, "nbd")
    bitmap = _prefixed(_string, value, "bitmap", required=False)
    return Volume(
        domain=str(domain),
        format=fmt,
        lease=_lease(value.get("lease")),
        nbd=nbd,
        bitmap=bitmap,
        **ids,
    )


def _lease(value: object) -> Lease | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidTicket(field="volume.lease", reason="must be an object")
    path = _prefixed(_string, value, "path", required=True, prefix="volume.lease")
    offset = _prefixed(_integer, value, "offset", required=True, prefix="volume.lease")
    return Lease(path=path, offset=offset)


def _prefixed(fn: Any, obj: dict[str, Any], name: str, prefix: str = "volume", **kw: Any) -> Any:
    """Run a field check, naming the field with its parent in the error."""
    try:
        return fn(obj, name, **kw)
    except InvalidTicket as e:
        raise InvalidTicket(field=f"{prefix}.{name}", reason=e.fields["reason"]) from None
