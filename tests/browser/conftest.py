"""The browser lane: Debian's Chromium, headless, against a real daemon.

One daemon, one Chromium and one page server per test module; each test
gets a fresh browser context with the page loaded from the page server's
origin (plain HTTP on 127.0.0.1, another port: another origin than the
daemon's https://127.0.0.1). Chromium that does not start fails the lane.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.browser.browserlane import Chromium, LaneError, PageServer, Relay, trusting_home
from tests.support.daemon import Daemon, finish, ini, new_directory

HERE = Path(__file__).resolve().parent
CDP_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(new_directory())
    try:
        yield d
    finally:
        problem = finish(d)
        if problem is not None:
            pytest.fail(problem)


@pytest.fixture(scope="module")
def proxy(daemon: Daemon) -> Iterator[Daemon]:
    """A proxy beside the daemon (serve --local DIR --proxy): its
    certificate comes from the same CA, which Chromium trusts."""
    p = Daemon(daemon.dir, ini({"control": {"ticket_port": 0}}), proxy=True)
    try:
        yield p
    finally:
        problem = finish(p)
        if problem is not None:
            pytest.fail(problem)


@pytest.fixture(scope="module")
def chromium(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    base = tmp_path_factory.mktemp("chromium")
    try:
        home = trusting_home(base / "home", daemon.ca)
        browser = Chromium(home, base / "profile")
    except (LaneError, OSError) as e:
        pytest.fail(f"the browser lane cannot start Chromium: {e}")
    try:
        yield browser
    finally:
        browser.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, chromium: Chromium) -> Iterator[Browser]:
    try:
        # Same host and file system: set_input_files passes paths, so a
        # 256 MiB file is not copied through the protocol.
        b = playwright.chromium.connect_over_cdp(
            chromium.endpoint, is_local=True, timeout=CDP_TIMEOUT_MS
        )
    except Exception as e:
        pytest.fail(f"cannot attach to Chromium over DevTools: {e}\n{chromium.log()}")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    server = PageServer(HERE / "page")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_relay(daemon: Daemon) -> Iterator[Callable[..., Relay]]:
    """Start relays to the daemon: make_relay(rate=bytes_per_second)."""
    started: list[Relay] = []

    def make(rate: int | None = None) -> Relay:
        started.append(Relay(daemon.port, rate))
        return started[-1]

    try:
        yield make
    finally:
        for r in started:
            r.stop()


@pytest.fixture
def page(browser: Browser, page_server: PageServer) -> Iterator[Page]:
    context = browser.new_context()
    try:
        p = context.new_page()
        console: list[str] = []
        p.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        p.goto(f"{page_server.origin}/index.html", timeout=CDP_TIMEOUT_MS)
        yield p
        # Shown by pytest only when the test failed.
        sys.stdout.write("--- page console ---\n" + "\n".join(console) + "\n")
    finally:
        context.close()
