"""Fixtures of the TLS unit tests: a local PKI per module and a loopback TLS
server on its certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest

from tests.unit.tls.support import TlsServer
from vdsm_imageio import pki, tls


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
