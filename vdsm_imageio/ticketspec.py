"""Parsing and validation of the ticket object sent by vdsm and the engine.

Rules:
- Every field is checked; an error names the field and the reason, never
  falls back to a default for a value that was sent.
- Unknown keys are accepted and ignored: the engine sends extras.
- ``ops`` is kept as sent (``["write"]`` reads back ``["write"]``, as
  ovirt-imageio reports it), and two tickets differ when their lists do;
  but ``write`` implies ``read`` when a request is authorized: a writer
  must be able to verify what it wrote.
- Exactly one of ``url`` and ``volume``.
- ``bool`` is not an ``int`` here, although Python says it is.
- Numbers have the range their users can hold: sizes and offsets fit the
  kernel's ``off_t``, timeouts the engine's Java ``int``. An integer out of
  range is refused without being rendered (turning a 4,000-digit integer
  into text costs time for nothing).
- Text is UTF-8 without control characters: the strings reach log lines,
  hook environments and file names, where a NUL or a newline does harm.
  ``transfer_id`` has no whitespace either, so ``transfer=ID`` stays one
  token in a log line.
- A wrong value is shown in an error only in a short form: JSON nests up
  to a thousand levels deep.
- ``TicketSpec.to_json()`` is the ticket object that parses back to the
  same spec.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import InvalidTicket

OPS = ("read", "write")
URL_SCHEMES = ("file", "nbd", "nbd+unix", "https")
VOLUME_DOMAINS = ("file", "block")
VOLUME_FORMATS = ("raw", "cow")
# sd_id, img_id and vol_id become path components and LVM names.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
# Byte counts the kernel takes as off_t, a signed 64-bit integer.
MAX_OFFSET = 2**63 - 1
# The engine reads timeouts into Java ints (about 68 years of seconds).
MAX_TIMEOUT = 2**31 - 1
# C0 controls, DEL and C1 controls (U+0085 ends a line for some readers).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WHITESPACE_RE = re.compile(r"\s")
VOLUME_KEYS = ("domain", "sd_id", "img_id", "vol_id", "format", "lease", "nbd", "bitmap")


@dataclass(frozen=True)
class Lease:
    path: str
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "offset": self.offset}


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

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "domain": self.domain,
            "sd_id": self.sd_id,
            "img_id": self.img_id,
            "vol_id": self.vol_id,
            "format": self.format,
            "nbd": self.nbd,
        }
        if self.lease is not None:
            obj["lease"] = self.lease.to_json()
        if self.bitmap is not None:
            obj["bitmap"] = self.bitmap
        return obj


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
        return op in self.ops or (op == "read" and "write" in self.ops)

    def to_json(self) -> dict[str, Any]:
        """The ticket object a client sends for this spec."""
        obj: dict[str, Any] = {
            "uuid": self.uuid,
            "size": self.size,
            "ops": list(self.ops),
            "timeout": self.timeout,
            "inactivity_timeout": self.inactivity_timeout,
            "transfer_id": self.transfer_id,
            "sparse": self.sparse,
            "dirty": self.dirty,
        }
        if self.url is not None:
            obj["url"] = self.url
        if self.volume is not None:
            obj["volume"] = self.volume.to_json()
        if self.filename is not None:
            obj["filename"] = self.filename
        return obj

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
    size = _integer(obj, "size", required=True, maximum=MAX_OFFSET)
    timeout = _integer(obj, "timeout", required=True, maximum=MAX_TIMEOUT)
    inactivity = _integer(obj, "inactivity_timeout", required=False, maximum=MAX_TIMEOUT)
    transfer_id = _string(obj, "transfer_id", required=False)
    if transfer_id is not None and _WHITESPACE_RE.search(transfer_id):
        raise InvalidTicket(field="transfer_id", reason="must not contain whitespace")
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
        raw_volume=_raw_volume(obj["volume"]) if volume is not None else None,
    )


def anonymous_transfer_id(uuid: str) -> str:
    """A log name for a ticket sent without transfer_id; the uuid is a secret."""
    return "anon-" + hashlib.sha256(uuid.encode()).hexdigest()[:12]


def check_integer(name: str, value: object, *, maximum: int) -> int:
    """value as an integer in 0..maximum, or InvalidTicket naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTicket(field=name, reason=f"must be an integer, got {show(value)}")
    if not 0 <= value <= maximum:
        raise InvalidTicket(field=name, reason=f"must be between 0 and {maximum}")
    return value


def check_text(name: str, value: object) -> str:
    """value as a non-empty string of UTF-8 text, or InvalidTicket naming the field."""
    if not isinstance(value, str) or not value:
        raise InvalidTicket(field=name, reason=f"must be a non-empty string, got {show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's "\udc80" escape decodes to a lone surrogate.
        raise InvalidTicket(field=name, reason="must be UTF-8 text") from None
    control = _CONTROL_RE.search(value)
    if control:
        reason = f"must not contain control character U+{ord(control.group()):04X}"
        raise InvalidTicket(field=name, reason=reason)
    return value


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40
SHOW_LIMIT = 60


def show(value: object) -> str:
    """A short rendering of a wrong value for an error message."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = _SHORT.repr(value)
    except ValueError:
        # An integer past Python's int-to-text digit limit, deeper inside.
        return f"a {type(value).__name__}"
    return text if len(text) <= SHOW_LIMIT else text[: SHOW_LIMIT - 3] + "..."


def _string(obj: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidTicket(field=name, reason="is required")
        return None
    return check_text(name, value)


def _integer(obj: dict[str, Any], name: str, *, required: bool, maximum: int) -> int | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidTicket(field=name, reason="is required")
        return None
    return check_integer(name, value, maximum=maximum)


def _boolean(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise InvalidTicket(field=name, reason=f"must be true or false, got {show(value)}")
    return value


def _ops(obj: dict[str, Any]) -> tuple[str, ...]:
    value = obj.get("ops")
    if value is None:
        raise InvalidTicket(field="ops", reason="is required")
    if not isinstance(value, list) or not value:
        raise InvalidTicket(field="ops", reason="must be a non-empty list")
    for op in value:
        if not isinstance(op, str) or op not in OPS:
            raise InvalidTicket(field="ops", reason=f"unknown operation {show(op)}")
    return tuple(value)


def _url(obj: dict[str, Any]) -> str | None:
    value = _string(obj, "url", required=False)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as e:
        # "http://[1.2.3.4:33" (unclosed IPv6 bracket), "https://h:99999/".
        raise InvalidTicket(field="url", reason=f"not a valid URL: {e}") from None
    if parts.scheme not in URL_SCHEMES:
        raise InvalidTicket(
            field="url",
            reason=f"unsupported scheme {show(parts.scheme)}, expected one of "
            + ", ".join(URL_SCHEMES),
        )
    if parts.scheme == "file":
        _file_path(parts.netloc, parts.path)
    # The socket and export are parsed when the ticket is added
    # (backends.nbd.parse_url), against [storage] url_roots.
    if parts.scheme == "nbd" and not value.startswith("nbd:unix:/"):
        raise InvalidTicket(field="url", reason="expected nbd:unix:/path[:exportname=NAME]")
    if parts.scheme == "nbd+unix" and not value.startswith("nbd+unix://"):
        raise InvalidTicket(field="url", reason="expected nbd+unix:///NAME?socket=/path")
    if parts.scheme == "https" and not parts.hostname:
        raise InvalidTicket(field="url", reason="https URL needs a host")
    return value


def _file_path(netloc: str, path: str) -> None:
    """The path of a file URL must name a local file the kernel can open."""
    if netloc not in ("", "localhost"):
        raise InvalidTicket(field="url", reason="file URL must not name another host")
    if not path.startswith("/"):
        raise InvalidTicket(field="url", reason="file URL needs an absolute path")
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidTicket(field="url", reason="file URL path is not UTF-8") from None
    # "%00" decodes to NUL, which no path can hold.
    control = _CONTROL_RE.search(decoded)
    if control:
        reason = f"file URL path has control character U+{ord(control.group()):04X}"
        raise InvalidTicket(field="url", reason=reason)


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
            reason = f"invalid identifier {show(ident)}"
            raise InvalidTicket(field=f"volume.{name}", reason=reason)
        ids[name] = ident
    fmt = value.get("format", "raw")
    if not isinstance(fmt, str) or fmt not in VOLUME_FORMATS:
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
    prefix = "volume.lease"
    path = _prefixed(_string, value, "path", required=True, prefix=prefix)
    offset = _prefixed(_integer, value, "offset", required=True, maximum=MAX_OFFSET, prefix=prefix)
    return Lease(path=path, offset=offset)


def _raw_volume(value: dict[str, Any]) -> dict[str, Any]:
    """The volume as sent, known keys only: status echoes it to the caller."""
    raw = {key: value[key] for key in VOLUME_KEYS if key in value}
    if isinstance(raw.get("lease"), dict):
        raw["lease"] = {key: raw["lease"][key] for key in ("path", "offset")}
    return raw


def _prefixed(fn: Any, obj: dict[str, Any], name: str, prefix: str = "volume", **kw: Any) -> Any:
    """Run a field check, naming the field with its parent in the error."""
    try:
        return fn(obj, name, **kw)
    except InvalidTicket as e:
        raise InvalidTicket(field=f"{prefix}.{name}", reason=e.reason) from None
