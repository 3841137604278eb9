"""Reading a connection: buffered heads, straight bodies, bounded waits."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vdsm_imageio import pki, tls
from vdsm_imageio.http.reader import SocketReader

KiB = 1024
MiB = 1024**2
Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def send_in_pieces(
    sock: socket.socket, data: bytes, piece: int, pause: float = 0.0
) -> threading.Thread:
    def run() -> None:
        for i in range(0, len(data), piece):
            sock.sendall(data[i : i + piece])
            if pause:
                time.sleep(pause)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_lines_across_refills_and_limits(pair: Pair) -> None:
    server, client = pair
    reader = SocketReader(server, size=16)
    client.sendall(b"first line that is longer than the buffer\r\nshort\nno newline")
    client.shutdown(socket.SHUT_WR)
    assert reader.readline(100) == b"first line that is longer than the buffer\r\n"
    assert reader.readline(3) == b"sho"
    assert reader.readline(100) == b"rt\n"
    # End of stream: what is left, then nothing.
    assert reader.readline(100) == b"no newline"
    assert reader.readline(100) == b""


def test_body_starts_in_the_buffer_and_goes_on_straight(
    pair: Pair,
) -> None:
    server, client = pair
    reader = SocketReader(server, size=4 * KiB)
    body = os.urandom(3 * MiB)
    sender = send_in_pieces(client, b"HEAD\r\n" + body, 64 * KiB, pause=0.001)
    assert reader.readline(100) == b"HEAD\r\n"
    buf = memoryview(bytearray(len(body)))
    first = reader.readinto(buf)
    # The first read only empties the buffer; the next one fills the rest
    # in one call although the client writes 64 KiB pieces.
    assert 0 < first <= 4 * KiB - len(b"HEAD\r\n")
    assert reader.readinto(buf[first:]) == len(body) - first
    assert bytes(buf) == body
    sender.join(5)


def test_small_reads_go_through_the_buffer(pair: Pair) -> None:
    server, client = pair
    reader = SocketReader(server, size=4 * KiB)
    client.sendall(b"abcdefgh")
    buf = memoryview(bytearray(3))
    assert reader.readinto(buf) == 3 and bytes(buf) == b"abc"
    assert reader.buffered == 5
    assert reader.readinto(memoryview(bytearray(100))) == 5


def test_end_of_stream_is_zero(pair: Pair) -> None:
    server, client = pair
    reader = SocketReader(server, size=4 * KiB)
    client.sendall(b"x" * 10)
    client.shutdown(socket.SHUT_WR)
    buf = memoryview(bytearray(MiB))
    assert reader.readinto(buf) == 10
    assert reader.readinto(buf) == 0


def test_straight_read_times_out_with_the_socket_timeout(
    pair: Pair,
) -> None:
    server, _client = pair
    server.settimeout(0.2)
    reader = SocketReader(server, size=4 * KiB)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        reader.readinto(memoryview(bytearray(MiB)))
    assert time.monotonic() - start < 3
    # The socket is back to its own timeout (non-blocking underneath).
    assert server.gettimeout() == 0.2


def test_straight_read_returns_what_came_before_the_timeout(
    pair: Pair,
) -> None:
    server, client = pair
    server.settimeout(0.3)
    reader = SocketReader(server, size=4 * KiB)
    client.sendall(b"y" * (100 * KiB))
    assert reader.readinto(memoryview(bytearray(MiB))) == 100 * KiB


def test_shutdown_ends_a_blocked_straight_read(pair: Pair) -> None:
    server, client = pair
    server.settimeout(None)
    reader = SocketReader(server, size=4 * KiB)
    client.sendall(b"z" * KiB)
    got: list[int | BaseException] = []

    def read() -> None:
        try:
            got.append(reader.readinto(memoryview(bytearray(MiB))))
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.2)
    assert not got, "the read must wait for the whole buffer"
    server.shutdown(socket.SHUT_RDWR)
    t.join(5)
    assert got == [KiB]


def test_tls_lines_and_body(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    server_ctx = tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)
    client_ctx = tls.client_context(str(local.ca_file))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    body = os.urandom(2 * MiB)

    def client() -> None:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"PUT / HTTP/1.1\r\n\r\n" + body)
                s.recv(1)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    raw, _ = listener.accept()
    listener.close()
    with server_ctx.wrap_socket(raw, server_side=True) as s:
        s.settimeout(5)
        assert isinstance(s, ssl.SSLSocket)
        reader = SocketReader(s, size=4 * KiB)
        assert reader.readline(100) == b"PUT / HTTP/1.1\r\n"
        assert reader.readline(100) == b"\r\n"
        buf = memoryview(bytearray(len(body)))
        got = 0
        while got < len(body):
            n = reader.readinto(buf[got:])
            assert n > 0
            got += n
        assert bytes(buf) == body
        s.sendall(b"k")
    t.join(5)
