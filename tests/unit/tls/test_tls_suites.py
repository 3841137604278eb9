"""TLS cipher suites over real loopback sockets, checked with the real
openssl s_client."""

from __future__ import annotations

import datetime
import ssl
import subprocess
import warnings
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.tls.support import (
    WAIT,
    TlsServer,
    connect,
)
from vdsm_imageio import pki, tls

# Cipher suites: on TLS 1.2 only AEAD with an ECDHE key exchange; TLS 1.3 as is.

# Each refused suite lacks AEAD, forward secrecy or both.
REFUSED = {
    "rsa": [
        "AES128-SHA",  # RSA key exchange, CBC, SHA-1
        "AES256-GCM-SHA384",  # RSA key exchange: AEAD but no forward secrecy
        "ECDHE-RSA-AES128-SHA",  # CBC, SHA-1
        "ECDHE-RSA-AES256-SHA384",  # CBC
        "DHE-RSA-AES128-GCM-SHA256",  # finite-field DHE
        "DHE-RSA-AES256-SHA",  # finite-field DHE, CBC, SHA-1
    ],
    "ecdsa": [
        "ECDHE-ECDSA-AES128-SHA",  # CBC, SHA-1
        "ECDHE-ECDSA-AES256-SHA",  # CBC, SHA-1
        "ECDHE-ECDSA-AES128-SHA256",  # CBC
    ],
}
ACCEPTED = {
    "rsa": [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ],
    "ecdsa": [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
}
TLS13_SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]


@dataclass(frozen=True)
class Pair:
    cert_file: str
    key_file: str


@pytest.fixture(scope="module")
def pairs(local: pki.LocalPki, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair]:
    """Server certificates with an ECDSA key (the local profile's) and an
    RSA key (as vdsm's certificates have), from the same CA."""
    loaded = pki.load_pair(local.ca_file, local.ca_key_file)
    assert loaded is not None
    ca_cert, ca_key = loaded
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = pki.issue_server_cert(ca_cert, ca_key, key, now=datetime.datetime.now(datetime.UTC))
    out = tmp_path_factory.mktemp("rsa")
    (out / "server.pem").write_bytes(pki.cert_pem(cert))
    (out / "server.key").write_bytes(pki.key_pem(key))
    return {
        "ecdsa": Pair(str(local.cert_file), str(local.key_file)),
        "rsa": Pair(str(out / "server.pem"), str(out / "server.key")),
    }


@pytest.fixture(scope="module")
def dh_params(tmp_path_factory: pytest.TempPathFactory) -> str:
    # A named group (RFC 7919): no parameter search, so it is instant.
    path = tmp_path_factory.mktemp("dh") / "dh.pem"
    out = subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048"],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    path.write_bytes(out.stdout)
    return str(path)


def anything_goes_server(pair: Pair, dh_params: str) -> ssl.SSLContext:
    """A control server that negotiates any suite OpenSSL has."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_dh_params(dh_params)
    ctx.load_cert_chain(pair.cert_file, pair.key_file)
    return ctx


def s_client(port: int, ca_file: str, *options: str) -> tuple[str, str] | None:
    """Handshake with the real openssl s_client: (version, suite), or None
    when the handshake failed."""
    out = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-brief",
            "-CAfile",
            ca_file,
            *options,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    if out.returncode != 0:
        return None
    fields = dict(
        line.split(": ", 1) for line in (out.stdout + out.stderr).splitlines() if ": " in line
    )
    return fields["Protocol version"], fields["Ciphersuite"]


CASES_REFUSED = [(kind, suite) for kind, suites in REFUSED.items() for suite in suites]
CASES_ACCEPTED = [(kind, suite) for kind, suites in ACCEPTED.items() for suite in suites]


@pytest.mark.parametrize("kind, suite", CASES_REFUSED)
def test_tls12_refuses_suites_without_aead_or_forward_secrecy(
    local: pki.LocalPki, pairs: dict[str, Pair], dh_params: str, kind: str, suite: str
) -> None:
    pair = pairs[kind]
    offer = ("-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0")
    # Control: the client really offers the suite and the certificate
    # allows it, so the refusal below is the server's policy.
    with TlsServer(anything_goes_server(pair, dh_params)) as control:
        assert s_client(control.port, str(local.ca_file), *offer) == ("TLSv1.2", suite)
    ctx = tls.server_context(pair.cert_file, pair.key_file, ca_file=None)
    with TlsServer(ctx) as server:
        assert s_client(server.port, str(local.ca_file), *offer) is None
        error = server.next_outcome().error
    assert error is not None
    assert error.reason == "NO_SHARED_CIPHER"


@pytest.mark.parametrize("kind, suite", CASES_ACCEPTED)
def test_tls12_accepts_ecdhe_aead_suites(
    local: pki.LocalPki, pairs: dict[str, Pair], kind: str, suite: str
) -> None:
    pair = pairs[kind]
    ctx = tls.server_context(pair.cert_file, pair.key_file, ca_file=None)
    with TlsServer(ctx) as server:
        got = s_client(server.port, str(local.ca_file), "-tls1_2", "-cipher", suite)
        assert got == ("TLSv1.2", suite)
        assert server.next_outcome().version == "TLSv1.2"


@pytest.mark.parametrize("suite", TLS13_SUITES)
def test_tls13_suites_still_negotiated(
    local: pki.LocalPki, pairs: dict[str, Pair], suite: str
) -> None:
    pair = pairs["rsa"]
    ctx = tls.server_context(pair.cert_file, pair.key_file, ca_file=None)
    with TlsServer(ctx) as server:
        got = s_client(server.port, str(local.ca_file), "-tls1_3", "-ciphersuites", suite)
        assert got == ("TLSv1.3", suite)
        assert server.next_outcome().version == "TLSv1.3"


def test_contexts_offer_only_aead_suites_with_forward_secrecy(local: pki.LocalPki) -> None:
    srv = tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)
    cli = tls.client_context(str(local.ca_file))
    for ctx in (srv, cli):
        ciphers = ctx.get_ciphers()
        tls13 = {c["name"] for c in ciphers if c["protocol"] == "TLSv1.3"}
        older = [c for c in ciphers if c["protocol"] != "TLSv1.3"]
        assert tls13 == set(TLS13_SUITES)
        assert older
        for c in older:
            assert c["aead"], c["name"]
            assert c["kea"] == "kx-ecdhe", c["name"]
            assert c["symmetric"] in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")


def test_client_context_refuses_a_server_that_offers_only_cbc(
    local: pki.LocalPki, pairs: dict[str, Pair], dh_params: str
) -> None:
    # Our client side (proxying to another daemon) holds the same line.
    ctx = anything_goes_server(pairs["ecdsa"], dh_params)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    # Control: a client that accepts CBC gets through.
    lenient = ssl.create_default_context(cafile=str(local.ca_file))
    lenient.set_ciphers("ALL:@SECLEVEL=0")
    with TlsServer(ctx) as server:
        assert connect(lenient, server.port) == "TLSv1.2"
        with pytest.raises(ssl.SSLError):
            connect(tls.client_context(str(local.ca_file)), server.port)
