"""A loopback TLS server that runs the worker-side handshake, and the clients
the TLS tests connect with."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from typing import Any

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
