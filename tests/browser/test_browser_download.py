"""What Chromium saves a download as, for file names of every language.

The page (another origin) clicks a link to the transfer URL, as a user
downloading a disk from the admin portal does; the daemon names the file
in Content-Disposition (filename* in UTF-8, an ASCII fallback). The test
reads the name Chromium chose and the bytes it saved.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.support.daemon import Daemon

pytestmark = pytest.mark.timeout(300)

KiB = 1024
DOWNLOAD_TIMEOUT_MS = 60_000

CLICK = """url => {
    const a = document.createElement("a");
    a.href = url;
    document.body.appendChild(a);
    a.click();
    a.remove();
}"""


@pytest.mark.parametrize(
    ("filename", "saved"),
    [
        ("\u05d3\u05d9\u05e1\u05e7.raw", "\u05d3\u05d9\u05e1\u05e7.raw"),  # Hebrew
        ("\u0434\u0438\u0441\u043a.raw", "\u0434\u0438\u0441\u043a.raw"),  # Cyrillic
        ("\u78c1\u76d8\u6620\u50cf.raw", "\u78c1\u76d8\u6620\u50cf.raw"),  # CJK
        ("café.raw", "café.raw"),
        # Never a directory: the daemon sends ".._.._etc_passwd", and
        # Chromium also turns the leading dot of a hidden name into "_".
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a\\b.raw", "a_b.raw"),
        # Quotes are sent as they are in filename*; Chromium replaces them.
        ('say "hi".raw', "say _hi_.raw"),
    ],
)
def test_chromium_saves_the_utf8_name(
    daemon: Daemon, page: Page, tmp_path: Path, filename: str, saved: str
) -> None:
    data = os.urandom(64 * KiB)
    ticket_id, _ = daemon.add_ticket(size=len(data), data=data, filename=filename)
    url = f"https://127.0.0.1:{daemon.port}/images/{ticket_id}"
    with page.expect_download(timeout=DOWNLOAD_TIMEOUT_MS) as info:
        page.evaluate(CLICK, url)
    download = info.value
    assert download.failure() is None
    assert download.suggested_filename == saved
    target = tmp_path / "saved"
    download.save_as(target)
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
