"""The --local profile's CA and server certificate on a real file system."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from vdsm_imageio import pki

FILES = ("ca.pem", "ca.key", "server.pem", "server.key")
NOW = datetime.datetime.now(datetime.UTC)


def contents(pki_dir: Path) -> dict[str, bytes]:
    return {name: (pki_dir / name).read_bytes() for name in FILES}


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_first_start_creates_ca_and_server_files(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    assert local.ca_file == tmp_path / "pki" / "ca.pem"
    assert local.cert_file == tmp_path / "pki" / "server.pem"
    assert local.key_file == tmp_path / "pki" / "server.key"
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == sorted(FILES)


def test_key_files_are_readable_by_owner_only(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    assert stat.S_IMODE(local.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(local.ca_key_file.stat().st_mode) == 0o600


def test_second_start_reuses_every_file(tmp_path: Path) -> None:
    pki.ensure_local_pki(tmp_path / "pki")
    before = contents(tmp_path / "pki")
    pki.ensure_local_pki(tmp_path / "pki")
    assert contents(tmp_path / "pki") == before


def test_server_cert_names_loopback_addresses_and_localhost(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    san = load_cert(local.cert_file).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(san.value.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]


def test_server_cert_is_for_servers_and_not_a_ca(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    cert = load_cert(local.cert_file)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert basic.value.ca is False
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage.value


def test_validity_is_backdated_and_bounded(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki", now=NOW)
    naive_now = NOW.replace(tzinfo=None)
    ca = load_cert(local.ca_file)
    server = load_cert(local.cert_file)
    for cert in (ca, server):
        assert cert.not_valid_before <= naive_now - datetime.timedelta(minutes=4)
    assert server.not_valid_after - naive_now <= datetime.timedelta(days=731)
    assert server.not_valid_after - naive_now >= datetime.timedelta(days=365)
    assert ca.not_valid_after - naive_now >= datetime.timedelta(days=3649)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_openssl_verifies_server_cert_strictly(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            str(local.ca_file),
            str(local.cert_file),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_missing_server_cert_is_reissued_by_same_ca(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    before = contents(tmp_path / "pki")
    local.cert_file.unlink()
    pki.ensure_local_pki(tmp_path / "pki")
    after = contents(tmp_path / "pki")
    assert after["ca.pem"] == before["ca.pem"]
    assert after["ca.key"] == before["ca.key"]
    assert after["server.key"] != before["server.key"]
    assert pki.signed_by(load_cert(local.cert_file), load_cert(local.ca_file))


def test_server_cert_not_matching_its_key_is_reissued(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    before = contents(tmp_path / "pki")
    # A crash between writing the new key and the new certificate.
    local.key_file.write_bytes(pki.key_pem(pki.new_key()))
    pki.ensure_local_pki(tmp_path / "pki")
    after = contents(tmp_path / "pki")
    assert after["server.pem"] != before["server.pem"]
    assert after["ca.pem"] == before["ca.pem"]


def test_expiring_server_cert_is_reissued(tmp_path: Path) -> None:
    two_years_ago = NOW - datetime.timedelta(days=2 * 365)
    local = pki.ensure_local_pki(tmp_path / "pki", now=two_years_ago)
    before = contents(tmp_path / "pki")
    pki.ensure_local_pki(tmp_path / "pki", now=NOW)
    after = contents(tmp_path / "pki")
    assert after["ca.pem"] == before["ca.pem"]
    assert after["server.pem"] != before["server.pem"]
    assert load_cert(local.cert_file).not_valid_after > NOW.replace(tzinfo=None)


def test_server_cert_of_another_ca_is_reissued(tmp_path: Path) -> None:
    ours = pki.ensure_local_pki(tmp_path / "ours")
    theirs = pki.ensure_local_pki(tmp_path / "theirs")
    shutil.copy(theirs.cert_file, ours.cert_file)
    shutil.copy(theirs.key_file, ours.key_file)
    pki.ensure_local_pki(tmp_path / "ours")
    assert pki.signed_by(load_cert(ours.cert_file), load_cert(ours.ca_file))


def test_ca_without_its_key_is_replaced_with_new_server_cert(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    before = contents(tmp_path / "pki")
    local.ca_key_file.unlink()
    pki.ensure_local_pki(tmp_path / "pki")
    after = contents(tmp_path / "pki")
    assert after["ca.pem"] != before["ca.pem"]
    assert pki.signed_by(load_cert(local.cert_file), load_cert(local.ca_file))


def test_signed_by_rejects_a_stranger(tmp_path: Path) -> None:
    ours = pki.ensure_local_pki(tmp_path / "ours")
    theirs = pki.ensure_local_pki(tmp_path / "theirs")
    # Same subject name, other key: only the signature tells them apart.
    assert not pki.signed_by(load_cert(ours.cert_file), load_cert(theirs.ca_file))


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    local = pki.ensure_local_pki(tmp_path / "pki")
    local.cert_file.unlink()
    pki.ensure_local_pki(tmp_path / "pki")
    assert not [p for p in (tmp_path / "pki").iterdir() if p.name.startswith(".")]
