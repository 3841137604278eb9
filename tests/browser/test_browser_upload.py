"""A page on another origin uploads through Chromium as the admin portal does.

The page (tests/browser/page) selects a real file through
``<input type=file>`` and sends it chunk by chunk to the transfer URL; the
test checks what landed on disk (sha256) and what the daemon reports as
``transferred`` on the control socket.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.browser.browserlane import Relay
from tests.support.daemon import Daemon

pytestmark = pytest.mark.timeout(600)

MiB = 1024**2
# Generous: the machine is shared and TLS in a browser is not fast.
UPLOAD_TIMEOUT_S = 300


def make_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def sha256(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = os.path.getsize(path) if size is None else size
        while left:
            data = f.read(min(left, 8 * MiB))
            assert data, f"{path} ended early"
            h.update(data)
            left -= len(data)
    return h.hexdigest()


def transfer_url(port: int, ticket_id: str) -> str:
    return f"https://127.0.0.1:{port}/images/{ticket_id}"


def upload(page: Page, file: Path, url: str, **options: Any) -> dict[str, Any]:
    """Select file in the page, run its upload to the end, return its state."""
    page.set_input_files("#file", str(file))
    page.evaluate("([url, options]) => startUpload(url, options)", [url, options])
    page.wait_for_function(
        "() => window.upload.phase !== 'transferring'", timeout=UPLOAD_TIMEOUT_S * 1000
    )
    return dict(page.evaluate("() => window.upload"))


def wait_idle(daemon: Daemon, ticket_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = daemon.status(ticket_id)
        if not status["active"]:
            return status
        assert time.monotonic() < deadline, f"ticket still active: {status}"
        time.sleep(0.05)


def assert_uploaded(daemon: Daemon, ticket_id: str, image: Path, source: Path) -> None:
    size = source.stat().st_size
    assert sha256(image, size) == sha256(source)
    assert wait_idle(daemon, ticket_id)["transferred"] == size


def assert_progress_shown(page: Page, state: dict[str, Any]) -> None:
    total = state["total"]
    steps = state["shownSteps"]
    assert any(0 < s < total for s in steps), steps
    assert steps[-1] == total
    assert page.eval_on_selector("#progress", "e => [e.value, e.max]") == [total, total]
    assert page.inner_text("#percent") == "100%"


def test_unaligned_size_uploads_in_chunks(daemon: Daemon, page: Page, tmp_path: Path) -> None:
    size = 3 * MiB + 517
    source = make_file(tmp_path / "unaligned.raw", size)
    ticket_id, image = daemon.add_ticket(size=size)
    state = upload(page, source, transfer_url(daemon.port, ticket_id), chunkSize=MiB)
    assert state["phase"] == "done", state
    assert [(r["start"], r["end"], r["status"]) for r in state["requests"]] == [
        (0, MiB, 200),
        (MiB, 2 * MiB, 200),
        (2 * MiB, 3 * MiB, 200),
        (3 * MiB, size, 200),
    ]
    assert state["retries"] == 0
    assert_uploaded(daemon, ticket_id, image, source)
    assert_progress_shown(page, state)
    assert state["shownSteps"] == sorted(state["shownSteps"])


def test_256_mib_in_8_mib_chunks(daemon: Daemon, page: Page, tmp_path: Path) -> None:
    size = 256 * MiB
    source = make_file(tmp_path / "large.raw", size)
    ticket_id, image = daemon.add_ticket(size=size)
    state = upload(page, source, transfer_url(daemon.port, ticket_id), chunkSize=8 * MiB)
    assert state["phase"] == "done", state
    assert len(state["requests"]) == 32
    assert {r["status"] for r in state["requests"]} == {200}
    assert_uploaded(daemon, ticket_id, image, source)
    assert_progress_shown(page, state)


def test_chunk_is_retried_after_connection_reset(
    daemon: Daemon, page: Page, make_relay: Callable[..., Relay], tmp_path: Path
) -> None:
    size = 6 * MiB + 4097
    source = make_file(tmp_path / "reset.raw", size)
    ticket_id, image = daemon.add_ticket(size=size)
    relay = make_relay()
    # In the body of the second chunk: the first one is acknowledged.
    relay.arm_resets(after=MiB + MiB // 2, count=3)
    state = upload(
        page,
        source,
        transfer_url(relay.port, ticket_id),
        chunkSize=MiB,
        maxRetries=5,
        retryDelayMs=100,
    )
    assert state["phase"] == "done", state
    assert relay.resets == 3
    failed = [r for r in state["requests"] if r["status"] != 200]
    # The page saw the reset (status 0: no answer) and sent that chunk again
    # from its start; nothing else failed.
    assert failed, state["requests"]
    assert {(r["start"], r["status"]) for r in failed} == {(MiB, 0)}
    assert state["retries"] == len(failed)
    assert [r["start"] for r in state["requests"] if r["status"] == 200] == [
        0,
        MiB,
        2 * MiB,
        3 * MiB,
        4 * MiB,
        5 * MiB,
        6 * MiB,
    ]
    assert_uploaded(daemon, ticket_id, image, source)


def test_cancel_then_resume_from_transferred(
    daemon: Daemon, page: Page, make_relay: Callable[..., Relay], tmp_path: Path
) -> None:
    chunk = 16 * MiB
    size = 2 * chunk + 8 * MiB + 1000
    source = make_file(tmp_path / "resume.raw", size)
    ticket_id, image = daemon.add_ticket(size=size)
    # A slow link leaves time for progress in the middle of a chunk (the
    # socket buffers alone hold several MiB), where the page cancels, as a
    # user clicking Cancel would: xhr.abort() of the running request.
    slow = make_relay(rate=16 * MiB)
    state = upload(
        page,
        source,
        transfer_url(slow.port, ticket_id),
        chunkSize=chunk,
        cancelAt=chunk + chunk // 2,
    )
    assert state["phase"] == "canceled", state
    assert chunk + chunk // 2 <= state["canceledAt"] < 2 * chunk
    assert [(r["start"], r["status"]) for r in state["requests"]] == [(0, 200), (chunk, 0)]
    # The portal resumes from what the engine reports: the daemon's
    # transferred, the union of what was written, of the aborted chunk too
    # (what the browser had queued in its socket before the abort arrives;
    # the rest of the chunk never leaves it).
    transferred = wait_idle(daemon, ticket_id)["transferred"]
    assert chunk <= transferred < 2 * chunk
    state = upload(
        page, source, transfer_url(daemon.port, ticket_id), chunkSize=chunk, start=transferred
    )
    assert state["phase"] == "done", state
    assert state["requests"][0]["start"] == transferred
    assert_uploaded(daemon, ticket_id, image, source)
    assert_progress_shown(page, state)


def test_expired_ticket_reason_is_readable_by_the_page(
    daemon: Daemon, page: Page, tmp_path: Path
) -> None:
    size = 2 * MiB
    source = make_file(tmp_path / "expired.raw", size)
    ticket_id, _ = daemon.add_ticket(size=size)
    daemon.result("Ticket.extend", uuid=ticket_id, timeout=0)
    state = upload(page, source, transfer_url(daemon.port, ticket_id), chunkSize=MiB, maxRetries=0)
    # Not a network error (status 0): the page reads the 403 and its reason.
    assert state["phase"] == "failed", state
    assert state["status"] == 403
    assert "has expired" in state["reason"]
    assert "has expired" in page.inner_text("#message")
    assert daemon.status(ticket_id)["transferred"] == 0


def test_upload_through_a_proxy(daemon: Daemon, proxy: Daemon, page: Page, tmp_path: Path) -> None:
    # The admin portal uploads to the proxy on the engine's host, which
    # relays each chunk to the daemon on the host that holds the disk.
    size = 20 * MiB + 3
    source = make_file(tmp_path / "proxied.raw", size)
    ticket_id, image = daemon.add_ticket(size=size)
    ticket = {
        "uuid": ticket_id,
        "size": size,
        "ops": ["write"],
        "timeout": 300,
        "url": transfer_url(daemon.port, ticket_id),
        "transfer_id": f"proxy-{ticket_id[:8]}",
    }
    proxy.result("Ticket.add", ticket=ticket)
    state = upload(page, source, transfer_url(proxy.port, ticket_id), chunkSize=4 * MiB)
    assert state["phase"] == "done", state
    assert len(state["requests"]) == 6
    assert {r["status"] for r in state["requests"]} == {200}
    assert_uploaded(daemon, ticket_id, image, source)
    assert wait_idle(proxy, ticket_id)["transferred"] == size
    assert_progress_shown(page, state)
