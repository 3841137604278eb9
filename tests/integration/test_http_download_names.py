"""Download file names of every language through a real daemon.

The ticket's ``filename`` reaches the client in Content-Disposition, in
two forms (RFC 6266, RFC 8187): ``filename*`` with the UTF-8 name, which
browsers use, and an ASCII ``filename`` fallback, which curl ``-OJ`` uses.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pytest

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

KiB = 1024
CURL_TIMEOUT = 60

NAMES = [
    # (ticket filename, name in filename*, ASCII fallback)
    ("\u05d3\u05d9\u05e1\u05e7.raw", "\u05d3\u05d9\u05e1\u05e7.raw", "____.raw"),  # Hebrew
    ("\u0434\u0438\u0441\u043a.raw", "\u0434\u0438\u0441\u043a.raw", "____.raw"),  # Cyrillic
    ("\u78c1\u76d8\u6620\u50cf.raw", "\u78c1\u76d8\u6620\u50cf.raw", "____.raw"),  # CJK
    ("café.raw", "café.raw", "cafe.raw"),
    ('say "hi".raw', 'say "hi".raw', "say _hi_.raw"),
    ("back\\slash.raw", "back_slash.raw", "back_slash.raw"),
    ("../../etc/passwd", ".._.._etc_passwd", ".._.._etc_passwd"),
    ("C:\\Windows\\disk.raw", "C:_Windows_disk.raw", "C:_Windows_disk.raw"),
    ("..", "__", "__"),
]


def disposition(value: str) -> tuple[str, str]:
    """The ASCII fallback and the decoded filename* of a header value."""
    m = re.fullmatch(r"attachment; filename=\"([^\"]*)\"; filename\*=UTF-8''([^\s;\"]*)", value)
    assert m is not None, value
    return m.group(1), unquote(m.group(2), errors="strict")


@pytest.mark.parametrize(("filename", "name", "fallback"), NAMES)
def test_download_sends_both_names_and_keeps_the_connection(
    daemon: Daemon, filename: str, name: str, fallback: str
) -> None:
    data = b"name" * KiB
    ticket_id, _ = daemon.add_ticket(size=len(data), data=data, filename=filename)
    conn = daemon.https()
    try:
        for _ in range(2):  # the connection serves the next request too
            conn.request("GET", f"/images/{ticket_id}")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert body == data
            value = resp.getheader("Content-Disposition")
            assert value is not None and value.isascii()
            assert disposition(value) == (fallback, name)
    finally:
        conn.close()


def test_a_range_download_names_the_file_too(daemon: Daemon) -> None:
    data = bytes(range(256)) * 16
    ticket_id, _ = daemon.add_ticket(size=len(data), data=data, filename="\u05d0.raw")
    conn = daemon.unix()
    try:
        conn.request("GET", f"/images/{ticket_id}", headers={"Range": "bytes=16-31"})
        resp = conn.getresponse()
        assert resp.read() == data[16:32]
        assert resp.status == 206
        assert disposition(resp.getheader("Content-Disposition", "")) == ("_.raw", "\u05d0.raw")
    finally:
        conn.close()


def test_without_filename_is_a_plain_attachment(daemon: Daemon) -> None:
    ticket_id, _ = daemon.add_ticket(size=KiB)
    conn = daemon.https()
    try:
        conn.request("GET", f"/images/{ticket_id}")
        resp = conn.getresponse()
        resp.read()
        assert resp.getheader("Content-Disposition") == "attachment"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("filename", "saved"),
    [
        ("café.raw", "cafe.raw"),
        ("\u0434\u0438\u0441\u043a.raw", "____.raw"),
        ("../x.raw", ".._x.raw"),
    ],
)
def test_curl_saves_the_fallback_name_in_its_directory(
    daemon: Daemon, tmp_path: Path, filename: str, saved: str
) -> None:
    data = b"curl" * KiB
    ticket_id, _ = daemon.add_ticket(size=len(data), data=data, filename=filename)
    out = tmp_path / "downloads"
    out.mkdir()
    subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            str(daemon.ca),
            "--remote-name",
            "--remote-header-name",
            f"https://127.0.0.1:{daemon.port}/images/{ticket_id}",
        ],
        cwd=out,
        check=True,
        timeout=CURL_TIMEOUT,
    )
    assert [p.name for p in out.iterdir()] == [saved]
    assert (out / saved).read_bytes() == data
    assert not (tmp_path / "x.raw").exists()


@pytest.mark.parametrize("control", ["\x00", "\n", "\r", "\x1b", "\x7f", "\x85"])
def test_filename_with_control_character_is_refused(daemon: Daemon, control: str) -> None:
    path = daemon.images / "control.raw"
    path.write_bytes(b"\0" * KiB)
    error = daemon.call(
        "Ticket.add",
        ticket={
            "uuid": "control-name",
            "size": KiB,
            "ops": ["read"],
            "timeout": 60,
            "url": path.as_uri(),
            "filename": f"a{control}b.raw",
        },
    )["error"]
    assert error["code"] == -32602
    assert error["data"]["field"] == "filename"
