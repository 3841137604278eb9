"""TLS contexts and the worker-side handshake, over real loopback sockets."""

from __future__ import annotations

import datetime
import queue
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from vdsm_imageio import pki, tls

DEADLINE = 3.0
WAIT = 30.0


@dataclass(frozen=True)
class Outcome:
    version: str | None = None
    peer_cert: Any = None
    error: tls.HandshakeFailed | None = None


class TlsServer:
    """Accepts on loopback and runs tls.handshake in one thread per connection,
    the way the HTTP server does."""

    def __init__(
        self, ctx: ssl.SSLContext, host: str = "127.0.0.1", deadline: float = DEADLINE
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._ctx = ctx
        self._deadline = deadline
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.outcomes: queue.Queue[Outcome] = queue.Queue()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            wrapped = self._ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            worker = threading.Thread(target=self._serve, args=(wrapped,), daemon=True)
            self._workers.append(worker)
            worker.start()

    def _serve(self, sock: ssl.SSLSocket) -> None:
        with sock:
            try:
                tls.handshake(sock, self._deadline)
            except tls.HandshakeFailed as e:
                self.outcomes.put(Outcome(error=e))
                return
            self.outcomes.put(Outcome(sock.version(), sock.getpeercert()))
            # Let the client finish reading the session tickets of TLS 1.3.
            sock.settimeout(WAIT)
            try:
                sock.recv(1)
            except OSError:
                pass

    def next_outcome(self) -> Outcome:
        return self.outcomes.get(timeout=WAIT)

    def __enter__(self) -> TlsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(WAIT)
        for worker in self._workers:
            worker.join(WAIT)
        self._listener.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> pki.LocalPki:
    return pki.ensure_local_pki(tmp_path_factory.mktemp("tls") / "pki")


@pytest.fixture
def server_ctx(local: pki.LocalPki) -> ssl.SSLContext:
    return tls.server_context(str(local.cert_file), str(local.key_file), ca_file=None)


@pytest.fixture
def server(server_ctx: ssl.SSLContext) -> Iterator[TlsServer]:
    with TlsServer(server_ctx) as srv:
        yield srv


def connect(
    ctx: ssl.SSLContext, port: int, host: str = "127.0.0.1", name: str | None = None
) -> str | None:
    """Handshake as a client and return the version; raises what ssl raises."""
    with socket.create_connection((host, port), timeout=WAIT) as sock:
        with ctx.wrap_socket(sock, server_hostname=name or host) as tls_sock:
            return tls_sock.version()


def pinned_client(local: pki.LocalPki, version: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = version
        ctx.maximum_version = version
    # TLS 1.0 and 1.1 need SHA-1 signatures, refused at the default level.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_verify_locations(cafile=str(local.ca_file))
    return ctx


def permissive_server(local: pki.LocalPki) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(str(local.cert_file), str(local.key_file))
    return ctx


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
