"""TLS contexts and the server-side handshake.

The HTTP server wraps each accepted socket with
``context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)``
when it accepts it, which costs no I/O, and advances the handshake with
``handshake_step`` whenever the socket is ready, never waiting in it: a
client that connects and stays silent holds a file descriptor until the
deadline, not a thread, and stalls no other connection. ``handshake`` is
the blocking form, under one deadline.

The floor is TLS 1.2, set on the context and asserted on the wire by the
tests: OpenSSL's defaults differ between distributions and a floor that is
only configured is not a floor. The same goes for the cipher suites: on
TLS 1.2 only AEAD ciphers with an ECDHE key exchange (``TLS12_CIPHERS``),
whatever the distribution's default list offers; TLS 1.3 suites are all
AEAD with forward secrecy and keep OpenSSL's defaults.
"""

from __future__ import annotations

import logging
import selectors
import ssl

from .errors import ImageioError, PeerClosed

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites (RFC 9325 section 4.2): AES-GCM or ChaCha20-Poly1305 after
# an ephemeral ECDH exchange. Left out: CBC modes (Lucky Thirteen, padding
# oracles) and with them every SHA-1 suite, the static RSA key exchange
# (no forward secrecy: a stolen key decrypts recorded transfers) and
# finite-field DHE (group size chosen by the server, Raccoon). Strongest
# first, for the server's preference. set_ciphers leaves TLS 1.3 alone.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class HandshakeFailed(PeerClosed):
    """The peer did not complete a TLS handshake in time or broke it.

    A peer's fault, expected on any public port (scanners, health checks,
    clients that distrust our certificate): log it briefly and close.
    """

    def __init__(self, *, peer: str, reason: str) -> None:
        ImageioError.__init__(
            self, f"TLS handshake with {peer} failed: {reason}", peer=peer, reason=reason
        )
        self.reason = reason


def server_context(
    cert_file: str,
    key_file: str,
    *,
    ca_file: str | None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context; ca_file verifies client certificates when required.

    Without require_client_cert the server never asks for a certificate: an
    optional request makes browsers offer a certificate picker during the
    engine UI upload.
    """
    if require_client_cert and not ca_file:
        raise ValueError("require_client_cert needs a ca_file to verify against")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    # The client's cipher order lets a client pick the weakest suite both
    # sides allow; ours lists the strongest first.
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # Client-initiated renegotiation of TLS 1.2 is a cheap way to make the
    # server do expensive handshakes; no client of ours needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert_file, key_file)
    if require_client_cert:
        ctx.load_verify_locations(cafile=ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(
    ca_file: str | None,
    *,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name.

    ca_file None trusts the system's CAs; cert_file/key_file present a client
    certificate.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    _harden(ctx)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def handshake(sock: ssl.SSLSocket, deadline_seconds: float) -> None:
    """Complete the server handshake within deadline_seconds or raise.

    The deadline covers the whole handshake, not each read: CPython's
    do_handshake measures socket timeouts against one deadline, so a client
    dripping a byte at a time cannot stretch it. The socket's previous
    timeout is restored afterwards.
    """
    peer = _peer_name(sock)
    previous = sock.gettimeout()
    sock.settimeout(deadline_seconds)
    try:
        sock.do_handshake()
    except TimeoutError:
        raise HandshakeFailed(
            peer=peer, reason=f"timed out after {deadline_seconds:g} seconds"
        ) from None
    except ssl.SSLError as e:
        raise HandshakeFailed(peer=peer, reason=e.reason or str(e)) from None
    except OSError as e:
        # ECONNRESET, EPIPE and the like: the peer gave up or was refused.
        raise HandshakeFailed(peer=peer, reason=e.strerror or str(e)) from None
    finally:
        sock.settimeout(previous)
    log.debug(
        "HANDSHAKE peer=%s version=%s cipher=%s",
        peer,
        sock.version(),
        _cipher_name(sock),
    )


def handshake_step(sock: ssl.SSLSocket) -> int:
    """Advance the handshake of a non-blocking socket without waiting.

    Returns 0 once the handshake is complete, else the ``selectors`` event
    to wait for before the next step (the peer has not sent enough yet, or
    our socket buffer is full). The caller keeps the deadline.
    """
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return selectors.EVENT_READ
    except ssl.SSLWantWriteError:
        return selectors.EVENT_WRITE
    except ssl.SSLError as e:
        raise HandshakeFailed(peer=_peer_name(sock), reason=e.reason or str(e)) from None
    except OSError as e:
        # ECONNRESET, EPIPE, ENOTCONN: the peer gave up or never connected.
        raise HandshakeFailed(peer=_peer_name(sock), reason=e.strerror or str(e)) from None
    log.debug(
        "HANDSHAKE peer=%s version=%s cipher=%s",
        _peer_name(sock),
        sock.version(),
        _cipher_name(sock),
    )
    return 0


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_ciphers(TLS12_CIPHERS)
    # CRIME (CVE-2012-4929): compression leaks secrets through lengths.
    ctx.options |= ssl.OP_NO_COMPRESSION


def _peer_name(sock: ssl.SSLSocket) -> str:
    try:
        peer = sock.getpeername()
    except OSError:
        return "unknown"
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or "unix"


def _cipher_name(sock: ssl.SSLSocket) -> str:
    cipher = sock.cipher()
    return cipher[0] if cipher else "none"
