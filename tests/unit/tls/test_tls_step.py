"""The non-blocking server handshake the lobby drives, over a real socket pair."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading

import pytest

from vdsm_imageio import pki, tls

WAIT = 10.0


def server_side(local: pki.LocalPki) -> tuple[ssl.SSLSocket, socket.socket]:
    ctx = tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.settimeout(WAIT)
    return ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False), b


def drive(sock: ssl.SSLSocket) -> int:
    """Step until done, waiting for what each step asks; the number of steps."""
    steps = 0
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while wait := tls.handshake_step(sock):
            steps += 1
            assert steps < 100
            sel.modify(sock, wait)
            assert sel.select(WAIT), "handshake stalled"
    return steps


def test_step_completes_a_handshake_without_blocking(local: pki.LocalPki) -> None:
    server, peer = server_side(local)
    client_ctx = ssl.create_default_context(cafile=str(local.ca_file))
    done: list[str] = []

    def client() -> None:
        with client_ctx.wrap_socket(peer, server_hostname="localhost") as c:
            done.append(c.version() or "")
            c.sendall(b"hello")

    # Nothing from the client yet: the step asks to wait instead of blocking.
    # (Asked once the client runs, a step may find its whole flight there:
    # OpenSSL reads the client's Finished in the call that wrote our reply.)
    assert tls.handshake_step(server) == selectors.EVENT_READ
    t = threading.Thread(target=client)
    t.start()
    drive(server)
    t.join(WAIT)
    assert done and done[0] in ("TLSv1.2", "TLSv1.3")
    server.settimeout(WAIT)
    assert server.recv(5) == b"hello"
    server.close()


def test_step_fails_on_a_peer_that_does_not_speak_tls(local: pki.LocalPki) -> None:
    server, peer = server_side(local)
    peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(tls.HandshakeFailed):
        drive(server)
    server.close()
    peer.close()


def test_step_fails_on_a_peer_that_closes(local: pki.LocalPki) -> None:
    server, peer = server_side(local)
    peer.close()
    with pytest.raises(tls.HandshakeFailed):
        drive(server)
    server.close()
