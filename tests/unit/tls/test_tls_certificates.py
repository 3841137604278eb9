"""TLS certificates over real loopback sockets: the names the server
certificate verifies for, and client certificates when they are required."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.unit.tls.support import (
    TlsServer,
    connect,
)
from vdsm_imageio import pki, tls


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_server_cert_verifies_for_ipv4_loopback_names(
    local: pki.LocalPki, server: TlsServer, name: str
) -> None:
    assert connect(tls.client_context(str(local.ca_file)), server.port, name=name)


def test_server_cert_verifies_for_ipv6_loopback(
    local: pki.LocalPki, server_ctx: ssl.SSLContext
) -> None:
    try:
        srv = TlsServer(server_ctx, host="::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with srv:
        assert connect(tls.client_context(str(local.ca_file)), srv.port, host="::1")


@pytest.mark.parametrize("name", ["127.0.0.2", "example.org", "localhost.localdomain"])
def test_server_cert_fails_for_other_names(
    local: pki.LocalPki, server: TlsServer, name: str
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        connect(tls.client_context(str(local.ca_file)), server.port, name=name)
    assert server.next_outcome().error is not None


def test_client_of_another_ca_fails_handshake(tmp_path: Path, server: TlsServer) -> None:
    stranger = pki.ensure_local_pki(tmp_path / "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(tls.client_context(str(stranger.ca_file)), server.port)
    error = server.next_outcome().error
    assert error is not None
    assert error.reason == "TLSV1_ALERT_UNKNOWN_CA"


# Client certificates.


def client_cert(tmp_path: Path, ca: pki.LocalPki) -> tuple[str, str]:
    pair = pki.load_pair(ca.ca_file, ca.ca_key_file)
    assert pair is not None
    ca_cert, ca_key = pair
    key = pki.new_key()
    cert = pki.issue_cert(
        ca_cert,
        ca_key,
        key,
        now=datetime.datetime.now(datetime.UTC),
        names=("backup-vendor",),
        days=1,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    cert_file = tmp_path / "client.pem"
    key_file = tmp_path / "client.key"
    cert_file.write_bytes(pki.cert_pem(cert))
    key_file.write_bytes(pki.key_pem(key))
    return str(cert_file), str(key_file)


@pytest.fixture
def mtls_server(local: pki.LocalPki) -> Iterator[TlsServer]:
    ctx = tls.server_context(
        str(local.cert_file),
        str(local.key_file),
        ca_file=str(local.ca_file),
        require_client_cert=True,
    )
    with TlsServer(ctx) as srv:
        yield srv


def test_required_client_cert_signed_by_ca_is_accepted(
    tmp_path: Path, local: pki.LocalPki, mtls_server: TlsServer
) -> None:
    cert_file, key_file = client_cert(tmp_path, local)
    ctx = tls.client_context(str(local.ca_file), cert_file=cert_file, key_file=key_file)
    connect(ctx, mtls_server.port)
    outcome = mtls_server.next_outcome()
    assert outcome.peer_cert is not None
    assert outcome.peer_cert["subject"] == ((("commonName", "backup-vendor"),),)


def test_required_client_cert_missing_fails_handshake(
    local: pki.LocalPki, mtls_server: TlsServer
) -> None:
    try:
        # With TLS 1.3 the client may finish before the server's verdict.
        connect(tls.client_context(str(local.ca_file)), mtls_server.port)
    except (ssl.SSLError, ConnectionError):
        pass
    error = mtls_server.next_outcome().error
    assert error is not None
    assert error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_required_client_cert_of_another_ca_fails_handshake(
    tmp_path: Path, local: pki.LocalPki, mtls_server: TlsServer
) -> None:
    stranger = pki.ensure_local_pki(tmp_path / "stranger")
    cert_file, key_file = client_cert(tmp_path, stranger)
    ctx = tls.client_context(str(local.ca_file), cert_file=cert_file, key_file=key_file)
    try:
        connect(ctx, mtls_server.port)
    except (ssl.SSLError, ConnectionError):
        pass
    error = mtls_server.next_outcome().error
    assert error is not None
    assert error.reason == "CERTIFICATE_VERIFY_FAILED"


def test_required_client_cert_needs_a_ca(local: pki.LocalPki) -> None:
    with pytest.raises(ValueError, match="ca_file"):
        tls.server_context(
            str(local.cert_file),
            str(local.key_file),
            ca_file=None,
            require_client_cert=True,
        )
