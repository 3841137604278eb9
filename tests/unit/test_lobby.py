"""The lobby's pure helpers: where a request head ends, how peers are named."""

import pytest

from vdsm_imageio.http.lobby import _blank_line, peer_name
from vdsm_imageio.http.server import Listener


@pytest.mark.parametrize(
    "parts,complete",
    [
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n"], False),
        # The empty line split across reads, at every place.
        ([b"GET / HTTP/1.1\r\nHost: x\r", b"\n\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n"], True),
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"\n"], True),
        # Bare LF lines end a head too; the parser then judges them.
        ([b"GET / HTTP/1.1\nHost: x\n", b"\n"], True),
        ([b"G", b"E", b"T", b" "], False),
    ],
)
def test_blank_line_is_found_across_reads(parts, complete):
    head = bytearray()
    found = False
    for part in parts:
        start = max(0, len(head) - 2)
        head += part
        found = found or _blank_line(head, start)
    assert found is complete


def test_peer_names():
    listener = Listener(None, "unix", None)  # type: ignore[arg-type]
    assert peer_name(("127.0.0.2", 4000), listener) == "127.0.0.2:4000"
    assert peer_name(("::1", 4000, 0, 0), listener) == "[::1]:4000"
    assert peer_name("", listener) == "unix"
