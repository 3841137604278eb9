"""Content-Disposition of downloads (RFC 6266, RFC 8187), without sockets."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from vdsm_imageio.http.disposition import NAME_MAX, content_disposition


def params(value: str) -> tuple[str, str]:
    """The fallback and the decoded filename* of a header value."""
    m = re.fullmatch(r"attachment; filename=\"([^\"]*)\"; filename\*=UTF-8''([^\s;\"]*)", value)
    assert m is not None, value
    return m.group(1), unquote(m.group(2), errors="strict")


@pytest.mark.parametrize(
    ("filename", "fallback"),
    [
        ("disk.raw", "disk.raw"),
        ("café.raw", "cafe.raw"),
        ("Ærø façade naïve.qcow2", "_r_ facade naive.qcow2"),
        ("\u05d0\u05d1\u05d2.raw", "___.raw"),  # Hebrew
        ("\u0434\u0438\u0441\u043a.raw", "____.raw"),  # Cyrillic
        ("\u78c1\u76d8\u6620\u50cf.raw", "____.raw"),  # CJK
        ("\U0001f4be backup.raw", "_ backup.raw"),  # outside the BMP
        ("ﬁle.raw", "file.raw"),  # a compatibility ligature, spelled out
    ],
)
def test_any_language_has_utf8_name_and_ascii_fallback(filename: str, fallback: str) -> None:
    value = content_disposition(filename)
    assert value.isascii()
    got_fallback, got_name = params(value)
    assert got_fallback == fallback
    assert got_name == filename


def test_plain_name_is_sent_in_both_forms() -> None:
    assert content_disposition("disk-1.raw") == (
        "attachment; filename=\"disk-1.raw\"; filename*=UTF-8''disk-1.raw"
    )


def test_no_filename_is_plain_attachment() -> None:
    assert content_disposition(None) == "attachment"
    assert content_disposition("") == "attachment"


@pytest.mark.parametrize(
    ("filename", "saved", "fallback"),
    [
        # A browser never writes outside the directory it chose: separators
        # become part of the name.
        ("../../etc/passwd", ".._.._etc_passwd", ".._.._etc_passwd"),
        ("/abs/disk.raw", "_abs_disk.raw", "_abs_disk.raw"),
        ("C:\\Users\\disk.raw", "C:_Users_disk.raw", "C:_Users_disk.raw"),
        ("a\uff0fb.raw", "a\uff0fb.raw", "a_b.raw"),  # full-width solidus is "/" in ASCII
        ("..", "__", "__"),
        (".", "_", "_"),
        ("\uff0e\uff0e", "\uff0e\uff0e", "__"),  # full-width dots are ".." in ASCII
        ("..disk", "..disk", "..disk"),
        # Controls never reach a header or a file name.
        ("a\x00b\nc\x7fd\x85e.raw", "a_b_c_d_e.raw", "a_b_c_d_e.raw"),
        # Quotes, backslashes and percents need no escaping in the fallback.
        ('say "hi".raw', 'say "hi".raw', "say _hi_.raw"),
        ("100%25.raw", "100%25.raw", "100_25.raw"),
        ("a;b, c=d.raw", "a;b, c=d.raw", "a;b, c=d.raw"),
    ],
)
def test_unsafe_characters(filename: str, saved: str, fallback: str) -> None:
    value = content_disposition(filename)
    assert value.isascii()
    got_fallback, got_name = params(value)
    assert got_name == saved
    assert got_fallback == fallback


def test_encoded_name_uses_only_attr_chars() -> None:
    # RFC 8187 section 3.2.1: attr-char, or "%" HEXDIG HEXDIG.
    value = content_disposition("a b!#$&+-.^_`|~'()*[]{}<>@:?=,;é\u05d0")
    encoded = value.split("UTF-8''", 1)[1]
    assert re.fullmatch(r"(?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-F]{2})*", encoded), encoded


@pytest.mark.parametrize(
    ("filename", "ending"),
    [
        ("a" * 300 + ".raw", ".raw"),
        ("\u78c1" * 100 + ".qcow2", ".qcow2"),  # 300 bytes of UTF-8
        ("b" * 300, "b"),
        ("c" * 250 + "." + "x" * 40, "x"),  # not an extension: cut like the rest
    ],
)
def test_long_name_is_cut_to_name_max_keeping_the_extension(filename: str, ending: str) -> None:
    fallback, name = params(content_disposition(filename))
    assert len(name.encode()) <= NAME_MAX
    assert len(fallback) <= NAME_MAX
    assert name.endswith(ending)
    assert fallback.endswith(ending)
    assert filename.startswith(name[: -len(ending)])


def test_cut_never_splits_a_character() -> None:
    # 3-byte characters: 255 is not a multiple of 3 once ".raw" is kept.
    _, name = params(content_disposition("\u05d0\u78c1" * 60 + ".raw"))
    assert name.endswith(".raw")
    assert len(name.encode()) <= NAME_MAX
    assert set(name[:-4]) <= {"\u05d0", "\u78c1"}
