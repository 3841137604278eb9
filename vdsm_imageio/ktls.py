"""Kernel TLS: whether this host can let the kernel encrypt, and whether it does.

Theory of operation: with kernel TLS, OpenSSL hands the record keys to the
socket after the handshake (the "tls" upper layer protocol, ``TCP_ULP``),
and the kernel encrypts whatever is written to the socket. Image data can
then be spliced into a TLS connection as into a plain one, with no copy
through Python and no record-sized write per 16 KiB. It takes three
things, each missing on some hosts:

- the standard library's ``ssl.OP_ENABLE_KTLS`` (Python 3.12 or later);
  we enable kernel TLS through it only, never by reaching into OpenSSL;
- OpenSSL 3.0 or later, built with kernel TLS (the build is not visible
  from Python: a connection shows it, see ``sends_in_kernel``);
- a kernel with the "tls" ULP (``CONFIG_TLS``): probed once at start on a
  connected loopback socket, since only a connected TCP socket takes it.

``probe`` gathers these facts, ``decide`` (pure) turns them into the
verdict the daemon logs at start. Even when all three are there, OpenSSL
falls back to encrypting in user space for ciphers the kernel lacks, so
each connection is asked (``sends_in_kernel``) before data is spliced
into it.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

# linux/tcp.h and linux/tls.h; Python 3.11's socket module names neither.
TCP_ULP = getattr(socket, "TCP_ULP", 31)
SOL_TLS = getattr(socket, "SOL_TLS", 282)
TLS_TX = 1
# struct tls_crypto_info is 4 bytes; the larger per-cipher structs start with it.
_CRYPTO_INFO_MAX = 64
MIN_OPENSSL = (3, 0)


@dataclass(frozen=True)
class Offload:
    """Whether kernel TLS may be enabled here, and if not, why."""

    available: bool
    reason: str = ""


def decide(*, has_option: bool, openssl: tuple[int, ...], kernel_error: str | None) -> Offload:
    """The verdict from the facts: every missing piece is named in reason."""
    missing = []
    if not has_option:
        missing.append("python ssl module has no OP_ENABLE_KTLS (Python 3.12 or later)")
    if tuple(openssl[:2]) < MIN_OPENSSL:
        missing.append(f"OpenSSL {'.'.join(map(str, openssl[:3]))} older than 3.0")
    if kernel_error is not None:
        missing.append(f"kernel tls ULP unavailable ({kernel_error})")
    if missing:
        return Offload(False, "; ".join(missing))
    return Offload(True)


def probe() -> Offload:
    """The verdict for this process and kernel."""
    return decide(
        has_option=hasattr(ssl, "OP_ENABLE_KTLS"),
        openssl=tuple(ssl.OPENSSL_VERSION_INFO),
        kernel_error=kernel_ulp_error(),
    )


def enable(ctx: ssl.SSLContext, offload: Offload) -> None:
    """Ask OpenSSL to hand the keys of ctx's connections to the kernel."""
    option = getattr(ssl, "OP_ENABLE_KTLS", None)
    if offload.available and option is not None:
        ctx.options |= option


def kernel_ulp_error() -> str | None:
    """None if the kernel attaches the "tls" ULP to a connected TCP socket,
    else why not (ENOENT: no CONFIG_TLS and no module to load)."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            with socket.create_connection(listener.getsockname(), timeout=5) as client:
                server, _ = listener.accept()
                with server:
                    client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else str(e)
    return None


def sends_in_kernel(sock: socket.socket) -> bool:
    """Whether the kernel encrypts what is written to sock (TLS_TX keys set)."""
    try:
        sock.getsockopt(SOL_TLS, TLS_TX, _CRYPTO_INFO_MAX)
    except OSError:
        # ENOPROTOOPT without the ULP; EBUSY or ENOTCONN without TX keys.
        return False
    return True


def describe(offload: Offload) -> str:
    """The start-up log line's tail."""
    return "enabled" if offload.available else f"unavailable reason={offload.reason}"
