"""Kernel TLS: the verdict from the host's facts, and the fallback here."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from vdsm_imageio import ktls, pki, tls


def test_every_piece_present_is_available() -> None:
    offload = ktls.decide(has_option=True, openssl=(3, 0, 13), kernel_error=None)
    assert offload == ktls.Offload(True)
    assert ktls.describe(offload) == "enabled"


@pytest.mark.parametrize(
    ("has_option", "openssl", "kernel_error", "says"),
    [
        (False, (3, 0, 13), None, "OP_ENABLE_KTLS"),
        (True, (1, 1, 1), None, "OpenSSL 1.1.1 older than 3.0"),
        (True, (3, 2, 0), "ENOENT", "kernel tls ULP unavailable (ENOENT)"),
    ],
)
def test_a_missing_piece_is_named(
    has_option: bool, openssl: tuple[int, ...], kernel_error: str | None, says: str
) -> None:
    offload = ktls.decide(has_option=has_option, openssl=openssl, kernel_error=kernel_error)
    assert not offload.available
    assert says in offload.reason
    assert ktls.describe(offload) == f"unavailable reason={offload.reason}"


def test_every_missing_piece_is_named() -> None:
    offload = ktls.decide(has_option=False, openssl=(1, 1, 1), kernel_error="ENOENT")
    assert offload.reason.count(";") == 2


def test_probe_agrees_with_this_host() -> None:
    offload = ktls.probe()
    kernel_error = ktls.kernel_ulp_error()
    assert ("OP_ENABLE_KTLS" in offload.reason) == (not hasattr(ssl, "OP_ENABLE_KTLS"))
    assert ("tls ULP" in offload.reason) == (kernel_error is not None)
    assert offload.available == (
        hasattr(ssl, "OP_ENABLE_KTLS")
        and ssl.OPENSSL_VERSION_INFO >= (3, 0)
        and kernel_error is None
    )


def test_enable_sets_the_option_only_when_available() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    before = ctx.options
    ktls.enable(ctx, ktls.Offload(False, "no"))
    assert ctx.options == before
    option = getattr(ssl, "OP_ENABLE_KTLS", None)
    ktls.enable(ctx, ktls.Offload(True))
    assert ctx.options == (before | option if option is not None else before)


def test_a_plain_socket_is_not_encrypted_by_the_kernel() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            server, _ = listener.accept()
            with server:
                assert not ktls.sends_in_kernel(client)
                assert not ktls.sends_in_kernel(server)


def test_a_tls_connection_without_offload_is_encrypted_by_openssl(tmp_path: Path) -> None:
    # The fallback this host takes: the connection is served, by OpenSSL.
    local = pki.ensure_local_pki(tmp_path / "pki")
    server_ctx = tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)
    offload = ktls.probe()
    ktls.enable(server_ctx, offload)
    client_ctx = tls.client_context(str(local.ca_file))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw_client = socket.create_connection(listener.getsockname(), timeout=5)
        raw_server, _ = listener.accept()
    with server_ctx.wrap_socket(
        raw_server, server_side=True, do_handshake_on_connect=False
    ) as server:
        server.settimeout(5)
        shake = threading.Thread(target=server.do_handshake, daemon=True)
        shake.start()
        with client_ctx.wrap_socket(raw_client, server_hostname="localhost") as client:
            shake.join(5)
            server.sendall(b"data")
            assert client.recv(4) == b"data"
            if not offload.available:
                assert not ktls.sends_in_kernel(server)
