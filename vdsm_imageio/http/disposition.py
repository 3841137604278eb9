"""Content-Disposition of a download: the name a browser saves the image as.

A ticket's ``filename`` is any Unicode text, but a header is bytes, and
old clients read only the plain ``filename`` parameter. So the header holds
both forms (RFC 6266 section 4.3, RFC 8187 section 3.2):
``attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>``.
A client that knows ``filename*`` (every current browser) uses it; curl
``-OJ`` and other old readers use the fallback.

Rules, for both forms, doing what a careful browser does anyway (RFC 6266
section 4.3: a recipient must not write outside the place it chose), so
every client saves the same, harmless name:
- ``/`` and ``\\`` (path separators) and control characters become ``_``;
  a name made only of dots (``.``, ``..``) becomes underscores.
- The name is cut to 255 bytes of UTF-8 (NAME_MAX of Linux file systems;
  longer names cannot be saved anywhere), keeping a short extension.
- The fallback spells letters without their accents (``café`` is
  ``cafe``); any other character outside printable ASCII becomes ``_``, as
  do ``"``, ``\\`` and ``%``, which some clients unescape or percent-decode
  in the quoted form (RFC 6266 appendix D), so no quoting is needed.
- ``filename*`` percent-encodes the UTF-8 bytes of every character but
  RFC 8187's attr-char.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

# Linux NAME_MAX: the longest file name, in bytes.
NAME_MAX = 255
# An extension longer than this is part of the name, not a type.
MAX_EXTENSION = 16
# RFC 8187 section 3.2.1: attr-char besides ALPHA and DIGIT ("_.-~" are
# always safe for quote()).
_ATTR_PUNCT = "!#$&+^`|"
# Path separators, C0 controls, DEL and C1 controls.
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
# What may stay in the quoted fallback: printable ASCII but '"', '%' and
# '\' (and '/', gone already).
_NOT_FALLBACK = re.compile(r'[^\x20-\x7e]|["%\\]')


def content_disposition(filename: str | None) -> str:
    """The Content-Disposition value of a download of the image."""
    if not filename:
        return "attachment"
    name = _truncate(_safe(filename), NAME_MAX)
    fallback = _truncate(_ascii(name), NAME_MAX)
    encoded = quote(name, safe=_ATTR_PUNCT, encoding="utf-8", errors="strict")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _safe(name: str) -> str:
    name = _UNSAFE.sub("_", name)
    if not name.strip("."):
        # "." and ".." name directories wherever they are saved.
        name = "_" * len(name)
    return name


def _ascii(name: str) -> str:
    # NFKD splits "é" into "e" and a combining accent (category Mn), and
    # spells compatibility forms (the "fi" ligature, full-width letters) in
    # ASCII.
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    # NFKD may also make separators (U+FF0F is "/") or a name of dots.
    return _safe(_NOT_FALLBACK.sub("_", letters))


def _truncate(name: str, limit: int) -> str:
    """name cut to limit bytes of UTF-8 on a character boundary, keeping a
    short extension."""
    data = name.encode("utf-8")
    if len(data) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = "." + ext if dot and stem else ""
    if len(suffix.encode("utf-8")) > MAX_EXTENSION:
        suffix = ""
    room = limit - len(suffix.encode("utf-8"))
    return data[:room].decode("utf-8", errors="ignore") + suffix
