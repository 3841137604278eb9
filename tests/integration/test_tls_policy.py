"""The daemon's TLS port, probed with the real openssl s_client.

tests/unit/tls/test_tls_suites.py covers every suite on the contexts; this checks the
listener the daemon builds from its configuration uses them.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

import pytest

from vdsm_imageio import ktls

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

WAIT = 30.0


def s_client(daemon: Daemon, *options: str) -> tuple[str, str] | None:
    """(version, suite) of a handshake, or None when it failed."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{daemon.port}", "-brief"]
    argv += ["-CAfile", str(daemon.ca), "-verify_return_error"]
    out = subprocess.run(
        [*argv, *options],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    if out.returncode != 0:
        return None
    lines = (out.stdout + out.stderr).splitlines()
    fields = dict(line.split(": ", 1) for line in lines if ": " in line)
    return fields["Protocol version"], fields["Ciphersuite"]


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"]
)
def test_daemon_refuses_cbc_suites_on_tls12(daemon: Daemon, suite: str) -> None:
    assert s_client(daemon, "-tls1_2", "-cipher", f"{suite}:@SECLEVEL=0") is None


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_daemon_accepts_ecdhe_aead_suites_on_tls12(daemon: Daemon, suite: str) -> None:
    assert s_client(daemon, "-tls1_2", "-cipher", suite) == ("TLSv1.2", suite)


def test_daemon_speaks_tls13(daemon: Daemon) -> None:
    got = s_client(daemon, "-tls1_3")
    assert got is not None
    assert got[0] == "TLSv1.3"


def test_daemon_logs_whether_the_kernel_encrypts(daemon: Daemon) -> None:
    # Kernel TLS is probed once at start; a host without it (no tls ULP,
    # a Python without OP_ENABLE_KTLS) says why and serves TLS through
    # OpenSSL, as the other tests here and the TLS transfers show.
    expected = f"TLS kernel offload {ktls.describe(ktls.probe())}"
    lines = [line for line in daemon.log().splitlines() if "TLS kernel offload" in line]
    assert len(lines) == 1
    assert lines[0].endswith(expected)
