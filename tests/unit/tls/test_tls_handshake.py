"""TLS contexts and the worker-side handshake, over real loopback sockets:
the protocol floor and the handshake deadline."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time

import pytest

from tests.unit.tls.support import (
    DEADLINE,
    WAIT,
    TlsServer,
    connect,
    permissive_server,
    pinned_client,
)
from vdsm_imageio import pki, tls


def test_contexts_set_tls12_floor_and_no_compression(local: pki.LocalPki) -> None:
    srv = tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)
    cli = tls.client_context(str(local.ca_file))
    for ctx in (srv, cli):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.options & ssl.OP_NO_COMPRESSION
    assert srv.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert srv.verify_mode == ssl.CERT_NONE
    assert cli.verify_mode == ssl.CERT_REQUIRED
    assert cli.check_hostname


@pytest.mark.parametrize(
    "version, name",
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_server_accepts_tls12_and_tls13(
    local: pki.LocalPki, server: TlsServer, version: ssl.TLSVersion, name: str
) -> None:
    ctx = tls.client_context(str(local.ca_file))
    ctx.maximum_version = version
    assert connect(ctx, server.port) == name
    assert server.next_outcome().version == name


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_server_refuses_tls_older_than_12(
    local: pki.LocalPki, server: TlsServer, version: str
) -> None:
    client = pinned_client(local, ssl.TLSVersion[version])
    # Control: this client really speaks the old version, so the refusal
    # below is the server's floor and not a client unable to say hello.
    with TlsServer(permissive_server(local)) as control:
        try:
            speaks_old = connect(client, control.port) is not None
        except ssl.SSLError:
            speaks_old = False
    with pytest.raises(ssl.SSLError):
        connect(client, server.port)
    error = server.next_outcome().error
    assert error is not None
    if speaks_old:
        assert error.reason == "UNSUPPORTED_PROTOCOL"


def test_silent_client_times_out_without_blocking_others(
    local: pki.LocalPki, server: TlsServer
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)):
        started = time.monotonic()
        # The silent connection was accepted first; a handshake in the accept
        # loop would hold this one until the deadline.
        assert connect(tls.client_context(str(local.ca_file)), server.port)
        assert time.monotonic() - started < DEADLINE
        first = server.next_outcome()
        assert first.version is not None
        second = server.next_outcome()
        assert second.error is not None
        assert "timed out" in second.error.reason
        assert time.monotonic() - started >= DEADLINE * 0.9


def test_dripping_client_cannot_stretch_the_deadline(server: TlsServer) -> None:
    # A TLS record header promising 512 bytes, then one byte at a time:
    # each read makes progress, so only a whole-handshake deadline ends it.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        sock.sendall(b"\x16\x03\x01\x02\x00")
        outcome = None
        for _ in range(int(DEADLINE * 4 / 0.2)):
            try:
                outcome = server.outcomes.get(timeout=0.2)
                break
            except queue.Empty:
                pass
            try:
                sock.sendall(b"\x00")
            except OSError:
                break
        if outcome is None:
            outcome = server.next_outcome()
        elapsed = time.monotonic() - started
    assert outcome.error is not None
    assert "timed out" in outcome.error.reason
    assert elapsed < DEADLINE * 3


def test_client_closing_early_fails_handshake(server: TlsServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)):
        pass
    error = server.next_outcome().error
    assert error is not None
    assert str(error).startswith("TLS handshake with 127.0.0.1:")


def test_handshake_restores_socket_timeout(local: pki.LocalPki) -> None:
    ctx = tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = threading.Thread(
            target=connect, args=(tls.client_context(str(local.ca_file)), port)
        )
        client.start()
        sock, _ = listener.accept()
        sock.settimeout(42.0)
        with ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False) as wrapped:
            tls.handshake(wrapped, DEADLINE)
            assert wrapped.gettimeout() == 42.0
        client.join(WAIT)
