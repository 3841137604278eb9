"""NBD URLs a ticket may carry: the qemu form and the NBD URI standard's
unix form, parsed strictly, and written back in the form they came in."""

from __future__ import annotations

import pytest

from vdsm_imageio.backends.nbd import parse_url, unix_url


@pytest.mark.parametrize(
    "url, expected",
    [
        ("nbd:unix:/run/a.sock", ("/run/a.sock", "")),
        ("nbd:unix:/run/a.sock:exportname=vol", ("/run/a.sock", "vol")),
        ("nbd:unix:/run/a:b.sock:exportname=x:y", ("/run/a:b.sock", "x:y")),
    ],
)
def test_parse_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url, expected",
    [
        # The NBD URI standard: export after the first "/", socket in the query.
        ("nbd+unix:///vol?socket=/run/a.sock", ("/run/a.sock", "vol")),
        ("nbd+unix://?socket=/run/a.sock", ("/run/a.sock", "")),
        ("nbd+unix:///?socket=/run/a.sock", ("/run/a.sock", "")),
        ("nbd+unix:////abs?socket=/run/a.sock", ("/run/a.sock", "/abs")),
        ("nbd+unix:///a%20b%2Fc?socket=/run/my%20dir/a.sock", ("/run/my dir/a.sock", "a b/c")),
        # "+" is a plus in a URI, not a space as in a form.
        ("nbd+unix:///a+b?socket=/run/a+b.sock", ("/run/a+b.sock", "a+b")),
        ("nbd+unix:///d%C3%ADsk?socket=/run/a.sock", ("/run/a.sock", "d\u00edsk")),
        ("nbd+unix:///x:y=z?socket=/run/a:b.sock", ("/run/a:b.sock", "x:y=z")),
    ],
)
def test_parse_standard_unix_uri(url: str, expected: tuple[str, str]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "nbd:unix:run/a.sock",
        "nbd://host/x",
        "file:///a",
        "nbd+unix:///vol",  # no socket
        "nbd+unix:///vol?socket=",  # empty socket
        "nbd+unix:///vol?socket=run/a.sock",  # relative socket
        "nbd+unix:///vol?socket=/a&socket=/b",  # two sockets
        "nbd+unix:///vol?socket=/a&tls=on",  # unknown parameter
        "nbd+unix:///vol?socket",  # no value
        "nbd+unix://host/vol?socket=/a",  # a host
        "nbd+unix://:10809/vol?socket=/a",  # a port
        "nbd+unix:///vol?socket=/a#frag",  # a fragment
        "nbd+unix:///v%00l?socket=/a",  # a NUL in the export
        "nbd+unix:///vol?socket=/a%0a",  # a newline in the socket
        "nbd+unix:///v%ffl?socket=/a",  # not UTF-8
        "nbd+unix:vol?socket=/a",  # not "//"
        "nbd+tcp://host/vol",
        "nbds+unix:///vol?socket=/a",
    ],
)
def test_parse_url_refuses_other_forms(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


@pytest.mark.parametrize(
    "path, export",
    [
        ("/run/a.sock", ""),
        ("/run/a.sock", "vol"),
        ("/run/my dir/a+b:c.sock", "a b/c?d#e&f=g+h"),
        ("/run/d\u00edsk/\u78c1.sock", "\u05d0"),
    ],
)
@pytest.mark.parametrize("form", ["nbd:unix:/x", "nbd+unix:///?socket=/x"])
def test_unix_url_keeps_the_form_and_parses_back(path: str, export: str, form: str) -> None:
    url = unix_url(path, export, like=form)
    assert url.startswith(form.split(":/", 1)[0])
    assert parse_url(url) == (path, export)
