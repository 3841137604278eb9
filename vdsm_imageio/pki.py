"""The private CA and server certificate of the ``--local`` profile.

Theory of operation: the first start creates a CA (``ca.pem``, ``ca.key``)
and a server certificate (``server.pem``, ``server.key``) signed by it,
valid for 127.0.0.1, ::1 and localhost, so a client trusts the daemon with
``--cafile DIR/pki/ca.pem`` and hostname checking on. Later starts reuse
the files; the server certificate alone is reissued when it is missing,
does not match its key, is not signed by the CA or is about to expire, so
clients keep trusting the same CA. A CA that cannot be used is replaced
(with a warning): this profile serves one machine, nothing else pins it.

Every file is written to a temporary name and renamed, keys before
certificates, so a crash leaves either the old pair or a certificate that
fails the key check and is reissued, never half a key. Keys are mode 0600.

Certificate building is pure (keys, names and time in, certificates out);
only ``ensure_local_pki`` touches the file system.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 730
# Reissue ahead of expiry so a long-running daemon restarted near the end
# does not start with a certificate that dies days later.
RENEW_BEFORE = datetime.timedelta(days=30)
# Backdated so a client whose clock lags a little still accepts it.
BACKDATE = datetime.timedelta(minutes=5)

LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class LocalPki:
    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path


def ensure_local_pki(pki_dir: Path, *, now: datetime.datetime | None = None) -> LocalPki:
    """Create or reuse the local CA and server certificate under pki_dir."""
    now = now or datetime.datetime.now(datetime.UTC)
    pki = LocalPki(
        ca_file=pki_dir / "ca.pem",
        ca_key_file=pki_dir / "ca.key",
        cert_file=pki_dir / "server.pem",
        key_file=pki_dir / "server.key",
    )
    pki_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    ca_cert, ca_key = _ensure_ca(pki, now)
    _ensure_server(pki, ca_cert, ca_key, now)
    return pki


def _ensure_ca(pki: LocalPki, now: datetime.datetime) -> tuple[x509.Certificate, PrivateKey]:
    ca = load_pair(pki.ca_file, pki.ca_key_file)
    if ca is not None and _valid_at(ca[0], now + RENEW_BEFORE):
        return ca
    if pki.ca_file.exists() or pki.ca_key_file.exists():
        log.warning("REPLACE local CA path=%s reason=unusable", pki.ca_file)
    log.info("CREATE local CA path=%s", pki.ca_file)
    key = new_key()
    cert = create_ca_cert(key, now=now)
    _write_atomic(pki.ca_key_file, key_pem(key), 0o600)
    _write_atomic(pki.ca_file, cert_pem(cert), 0o644)
    return cert, key


def _ensure_server(
    pki: LocalPki,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    now: datetime.datetime,
) -> None:
    server = load_pair(pki.cert_file, pki.key_file)
    if server is None:
        reason = "missing"
    elif not signed_by(server[0], ca_cert):
        reason = "not-signed-by-ca"
    elif not _valid_at(server[0], now + RENEW_BEFORE):
        reason = "expiring"
    else:
        return
    log.info("ISSUE server certificate path=%s reason=%s", pki.cert_file, reason)
    key = new_key()
    cert = issue_server_cert(ca_cert, ca_key, key, now=now)
    _write_atomic(pki.key_file, key_pem(key), 0o600)
    _write_atomic(pki.cert_file, cert_pem(cert), 0o644)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_ca_cert(
    key: PrivateKey, *, now: datetime.datetime, days: int = CA_DAYS
) -> x509.Certificate:
    """A self-signed CA that may sign end-entity certificates only."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vdsm-imageio"),
            x509.NameAttribute(NameOID.COMMON_NAME, "vdsm-imageio local CA"),
        ]
    )
    public = key.public_key()
    return (
        _builder(name, name, public, now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    *,
    now: datetime.datetime,
    names: tuple[str, ...] = LOCAL_NAMES,
    days: int = SERVER_DAYS,
) -> x509.Certificate:
    return issue_cert(
        ca_cert,
        ca_key,
        key,
        now=now,
        names=names,
        days=days,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )


def issue_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    *,
    now: datetime.datetime,
    names: tuple[str, ...],
    days: int,
    usage: x509.ObjectIdentifier,
) -> x509.Certificate:
    """An end-entity certificate for names (IP literals or DNS names)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    return (
        _builder(subject, ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether issuer's key made cert's signature (cryptography 38 has no helper)."""
    public = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    if cert.issuer != issuer.subject or algorithm is None:
        return False
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(
                cert.signature,
                cert.tbs_certificate_bytes,
                padding.PKCS1v15(),
                algorithm,
            )
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _valid_at(cert: x509.Certificate, when: datetime.datetime) -> bool:
    naive = when.astimezone(datetime.UTC).replace(tzinfo=None)
    return cert.not_valid_before <= naive < cert.not_valid_after


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    now: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def load_pair(cert_file: Path, key_file: Path) -> tuple[x509.Certificate, PrivateKey] | None:
    """The certificate and its key, or None if either is missing or they differ."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except ValueError as e:
        log.warning("IGNORE unreadable pki file cert=%s reason=%s", cert_file, e)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        return None
    return cert, key


def _public_der(public: object) -> bytes:
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    # Created with its final mode: a key is never readable by others, even
    # for the moment between open and chmod.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
