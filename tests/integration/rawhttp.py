"""Raw HTTP/1.1 over a socket: what a client library never sends."""

from __future__ import annotations

import http.client
import socket


def read_reply(sock: socket.socket, method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    return resp, resp.read()


def send(
    sock: socket.socket,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[http.client.HTTPResponse, bytes]:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return read_reply(sock, method)


def closed_by_server(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the server closes the connection within timeout."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket, ticket_id: str) -> bool:
    resp, _ = send(sock, "OPTIONS", f"/images/{ticket_id}")
    return resp.status == 200
