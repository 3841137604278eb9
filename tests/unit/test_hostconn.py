"""Proxy tickets' URLs (vdsm_imageio.backends.hostconn) and how logs show them."""

from __future__ import annotations

import logging

import pytest

from vdsm_imageio.backends.hostconn import HostUrl, parse_url
from vdsm_imageio.registry import Registry

TICKET = "2f0c8c2e-6d2a-4c55-9a55-93c4bd6c0e01"


@pytest.mark.parametrize(
    "url, expected",
    [
        (f"https://host.example:54322/images/{TICKET}", ("host.example", 54322)),
        (f"https://10.0.0.2:54322/images/{TICKET}/", ("10.0.0.2", 54322)),
        (f"https://[fd00::2]:54322/images/{TICKET}", ("fd00::2", 54322)),
        (f"https://host.example/images/{TICKET}", ("host.example", 443)),
    ],
)
def test_transfer_urls_name_the_host_and_the_ticket(url: str, expected: tuple[str, int]) -> None:
    assert parse_url(url) == HostUrl(*expected, f"/images/{TICKET}")


@pytest.mark.parametrize(
    "url",
    [
        f"http://host/images/{TICKET}",
        f"https:///images/{TICKET}",
        "https://host/images/",
        f"https://host/images/{TICKET}/extents",
        f"https://host/tickets/{TICKET}",
        f"https://host/images/{TICKET}?flush=y",
        f"https://host/images/{TICKET}#x",
        f"https://user@host/images/{TICKET}",
        f"https://host:99999/images/{TICKET}",
    ],
)
def test_anything_else_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_logs_of_a_proxy_ticket_name_the_host_never_the_ticket(
    caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    registry = Registry(clock=lambda: 0.0, remove_timeout=1.0, default_inactivity_timeout=60)
    url = f"https://10.0.0.2:54322/images/{TICKET}{suffix}"
    ticket = {"uuid": TICKET, "size": 1, "ops": ["read"], "timeout": 60, "url": url}
    with caplog.at_level(logging.INFO):
        registry.add(ticket)
        registry.remove(TICKET)
    assert "url=https://10.0.0.2:54322/..." in caplog.text
    assert TICKET not in caplog.text
